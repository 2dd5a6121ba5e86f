// Minimal SVG line and bar charts.
#include "src/common/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>

#include "geopipe/error.h"

namespace geopipe::common {
namespace {

const char* const kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                               "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else out += c;
  }
  return out;
}

std::string num(double v) {
  char buf[32];
  if (std::abs(v) >= 1000 || (std::abs(v) < 0.01 && v != 0)) {
    std::snprintf(buf, sizeof(buf), "%.3g", v);
  } else {
    std::snprintf(buf, sizeof(buf), "%.3g", v);
  }
  return buf;
}

void header(std::ostringstream& os, const ChartOptions& o) {
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << o.width << "\" height=\""
     << o.height << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
     << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
     << "<text x=\"" << o.width / 2 << "\" y=\"20\" text-anchor=\"middle\" font-size=\"15\">"
     << escape(o.title) << "</text>\n";
}

}  // namespace

std::string lineChartSvg(const std::vector<Series>& series, const ChartOptions& o) {
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  for (const auto& s : series)
    for (const auto& [x, y] : s.points) {
      x0 = std::min(x0, x), x1 = std::max(x1, x);
      y0 = std::min(y0, y), y1 = std::max(y1, y);
    }
  if (!std::isfinite(x0)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 = y0 + 1;
  const double pad = 0.05 * (y1 - y0);
  y0 -= pad, y1 += pad;
  const int left = 70, right = 170, top = 35, bottom = 50;
  const int pw = o.width - left - right, ph = o.height - top - bottom;
  auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * pw; };
  auto py = [&](double y) { return top + (1 - (y - y0) / (y1 - y0)) * ph; };
  std::ostringstream os;
  header(os, o);
  os << "<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << pw << "\" height=\"" << ph
     << "\" fill=\"none\" stroke=\"#444\"/>\n";
  for (int i = 0; i <= 5; ++i) {
    const double yv = y0 + (y1 - y0) * i / 5, xv = x0 + (x1 - x0) * i / 5;
    os << "<line x1=\"" << left << "\" x2=\"" << left + pw << "\" y1=\"" << py(yv) << "\" y2=\""
       << py(yv) << "\" stroke=\"#ddd\"/>\n"
       << "<text x=\"" << left - 6 << "\" y=\"" << py(yv) + 4 << "\" text-anchor=\"end\">"
       << num(yv) << "</text>\n"
       << "<text x=\"" << px(xv) << "\" y=\"" << top + ph + 16 << "\" text-anchor=\"middle\">"
       << num(xv) << "</text>\n";
  }
  os << "<text x=\"" << left + pw / 2 << "\" y=\"" << o.height - 12
     << "\" text-anchor=\"middle\">" << escape(o.x_label) << "</text>\n"
     << "<text transform=\"translate(16," << top + ph / 2
     << ") rotate(-90)\" text-anchor=\"middle\">" << escape(o.y_label) << "</text>\n";
  for (size_t i = 0; i < series.size(); ++i) {
    const char* color = kColors[i % 8];
    os << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"1.5\" points=\"";
    for (const auto& [x, y] : series[i].points) os << px(x) << "," << py(y) << " ";
    os << "\"/>\n"
       << "<rect x=\"" << left + pw + 12 << "\" y=\"" << top + 18 * i << "\" width=\"12\" height=\"12\" fill=\""
       << color << "\"/>\n"
       << "<text x=\"" << left + pw + 30 << "\" y=\"" << top + 18 * i + 10 << "\">"
       << escape(series[i].name) << "</text>\n";
  }
  os << "</svg>\n";
  return os.str();
}

std::string barChartSvg(const std::vector<std::pair<std::string, double>>& bars,
                        const ChartOptions& o) {
  double vmax = 0;
  for (const auto& b : bars) vmax = std::max(vmax, b.second);
  if (vmax <= 0) vmax = 1;
  const int left = 200, right = 80, top = 40, row = 26;
  ChartOptions sized = o;
  sized.height = std::max(o.height / 3, top + row * static_cast<int>(bars.size()) + 40);
  const int pw = sized.width - left - right;
  std::ostringstream os;
  header(os, sized);
  for (size_t i = 0; i < bars.size(); ++i) {
    const double w = bars[i].second / vmax * pw;
    const int y = top + static_cast<int>(i) * row;
    os << "<text x=\"" << left - 8 << "\" y=\"" << y + 15 << "\" text-anchor=\"end\">"
       << escape(bars[i].first) << "</text>\n"
       << "<rect x=\"" << left << "\" y=\"" << y << "\" width=\"" << w << "\" height=\""
       << row - 6 << "\" fill=\"" << kColors[i % 8] << "\"/>\n"
       << "<text x=\"" << left + w + 6 << "\" y=\"" << y + 15 << "\">" << num(bars[i].second)
       << "</text>\n";
  }
  os << "<text x=\"" << left + pw / 2 << "\" y=\"" << sized.height - 10
     << "\" text-anchor=\"middle\">" << escape(o.x_label) << "</text>\n</svg>\n";
  return os.str();
}

std::string stackedSvg(const std::vector<std::string>& charts) {
  // Each chart starts with header()'s <svg ... width="W" height="H" ...>.
  const auto attribute = [](const std::string& svg, const std::string& name) {
    const std::string key = " " + name + "=\"";
    const size_t at = svg.find(key);
    return at == std::string::npos ? 0 : std::atoi(svg.c_str() + at + key.size());
  };
  int width = 0, height = 0;
  std::ostringstream body;
  for (const std::string& chart : charts) {
    body << "<svg y=\"" << height << "\"" << chart.substr(std::string("<svg").size());
    width = std::max(width, attribute(chart, "width"));
    height += attribute(chart, "height");
  }
  std::ostringstream os;
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
     << "\">\n"
     << body.str() << "</svg>\n";
  return os.str();
}

void writeTextFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  if (!out) GEOPIPE_THROW(IoError, "cannot write '", path, "'");
}

}  // namespace geopipe::common
