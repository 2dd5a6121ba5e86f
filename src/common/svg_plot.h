// Minimal SVG charts for benchmark reports (no plotting dependency): line
// charts of several series and horizontal bar charts, with axes and a legend.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace geopipe::common {

struct Series {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y)
};

struct ChartOptions {
  std::string title;
  std::string x_label;
  std::string y_label;
  int width = 720;   // pixels
  int height = 420;  // pixels
};

// A line chart of every series on shared axes (ranges from the data).
std::string lineChartSvg(const std::vector<Series>& series, const ChartOptions& options);

// One bar per (label, value), horizontal, largest scale from the data.
std::string barChartSvg(const std::vector<std::pair<std::string, double>>& bars,
                        const ChartOptions& options);

// Charts of lineChartSvg / barChartSvg one above the other in one SVG
// (each a nested <svg> placed at its y offset).
std::string stackedSvg(const std::vector<std::string>& charts);

// Writes text to path; IoError naming the path on failure.
void writeTextFile(const std::string& path, const std::string& text);

}  // namespace geopipe::common
