#!/usr/bin/python3
"""geopipe's live metrics endpoint read by a client that is not geopipe's.

Runs `geopipe VERB job.yaml --plot FILE.svg` (VERB: train or launch) on a
tiny 2-stage job over an emulated 20 ms link with logging.metrics_port set,
fetches http://127.0.0.1:PORT/metrics with Python's urllib while it trains,
and checks that the text is the Prometheus text exposition format 0.0.4
(checked by the rules of the format here, no geopipe code): the content type,
a HELP and a TYPE line before every family's samples, every sample line
`name{label="value",...} value` with a known type, and that geopipe_step
advances between two fetches. Then the --plot SVG: a loss panel and a
step-time panel with the compute, bubble and network-wait series. Then a
port already in use: refused naming logging.metrics_port.

Usage: metrics_endpoint_test.py GEOPIPE_BINARY train|launch
"""
import os
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET

STEPS = 40

JOB = """name: endpoint-"test"
model: {preset: none, layers: 2, hidden: 16, heads: 2, seq_len: 8, vocab: 16}
data: {kind: synthetic, num_samples: 32}
training:
  steps: %d
  global_batch: 4
  micro_batch: 2
  optimizer: {kind: adamw, lr: 1.0e-2}
parallelism: {pipeline_stages: 2, data_parallel: 1}
transport: {emulate_links: true}
topology:
  name: two
  sites:
    - {name: west, devices: 1, intra: {latency_ms: 0, bandwidth_gbps: 100}}
    - {name: east, devices: 1, intra: {latency_ms: 0, bandwidth_gbps: 100}}
  links: [{sites: [west, east], latency_ms: 20, bandwidth_gbps: 1}]
logging: {metrics_port: %d, metrics_file: metrics.jsonl}
"""

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\\\|\\"|\\n)*"'
LABELS = r"\{(?:%s=%s(?:,%s=%s)*)?\}" % (NAME, LABEL_VALUE, NAME, LABEL_VALUE)
VALUE = r"(?:[-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|Inf)|NaN)"
SAMPLE = re.compile(r"^(%s)(%s)? (%s)$" % (NAME, LABELS, VALUE))


def fail(message):
    print("FAIL: " + message)
    sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse(text):
    """{family: (type, [(labels text, value)])}, by the format's rules."""
    families = {}
    helped, typed = set(), {}
    for line in text.split("\n")[:-1]:  # the text ends with a line feed
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            if name in helped:
                fail("second HELP for " + name)
            helped.add(name)
        elif line.startswith("# TYPE "):
            parts = line.split(" ")
            if len(parts) != 4 or parts[3] not in ("gauge", "counter"):
                fail("bad TYPE line: " + line)
            if parts[2] not in helped:
                fail("TYPE before HELP: " + line)
            typed[parts[2]] = parts[3]
            families[parts[2]] = (parts[3], [])
        elif line.startswith("#"):
            continue
        else:
            m = SAMPLE.match(line)
            if not m:
                fail("not a sample line: %r" % line)
            name = m.group(1)
            if name not in typed:
                fail("sample before its TYPE line: " + line)
            families[name][1].append((m.group(2) or "", float(m.group(3))))
    return families


def fetch(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        ctype = r.headers.get("Content-Type", "")
        if not ctype.startswith("text/plain; version=0.0.4"):
            fail("content type " + ctype)
        return r.read().decode("utf-8")


def value(families, name, labels=""):
    for l, v in families.get(name, ("", []))[1]:
        if l == labels:
            return v
    fail("no sample %s%s in %s" % (name, labels, sorted(families)))


def check_plot(plot, steps):
    """The --plot SVG: two panels, the loss and the step time's parts."""
    svg = ET.parse(plot).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    panels = svg.findall(ns + "svg")
    if len(panels) != 2:
        fail("expected 2 panels, found %d" % len(panels))
    texts = [[t.text for t in p.iter(ns + "text")] for p in panels]
    lines = [len(p.findall(ns + "polyline")) for p in panels]
    if "loss" not in texts[0] or lines[0] < 1:
        fail("no loss series: %s" % texts[0])
    for series in ("step", "compute", "bubble", "network wait"):
        if series not in texts[1]:
            fail("no %s series in the step-time panel: %s" % (series, texts[1]))
    if lines[1] != 4:
        fail("step-time panel has %d lines" % lines[1])
    for p in panels[1].findall(ns + "polyline"):
        if len(p.get("points").split()) != steps:
            fail("a step-time series without a point per step")


def main():
    geopipe, verb = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        job = os.path.join(tmp, "job.yaml")
        with open(job, "w") as f:
            f.write(JOB % (STEPS, port))
        plot = os.path.join(tmp, "plot.svg")
        proc = subprocess.Popen([geopipe, verb, job, "--plot", plot], cwd=tmp,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        steps_seen = []
        text = ""
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            try:
                text = fetch(port)
            except OSError:
                time.sleep(0.05)
                continue
            families = parse(text)
            step = value(families, "geopipe_step")
            if step > 0 and (not steps_seen or step > steps_seen[-1]):
                steps_seen.append(step)
                last = families
            if len(steps_seen) >= 2 and steps_seen[-1] < STEPS:
                break
            time.sleep(0.05)
        out, _ = proc.communicate(timeout=300)
        if proc.returncode != 0:
            fail("%s exited %d:\n%s" % (verb, proc.returncode, out))
        if len(steps_seen) < 2 or steps_seen[-1] <= steps_seen[0]:
            fail("geopipe_step did not advance between fetches: %s\n%s" % (steps_seen, out))
        if "metrics endpoint: http://127.0.0.1:%d/metrics" % port not in out:
            fail("the endpoint is not announced:\n" + out)
        # The families and labels the docs promise.
        if value(last, "geopipe_steps") != STEPS:
            fail("geopipe_steps")
        value(last, "geopipe_info", '{job="endpoint-\\"test\\"",topology="two"}')
        for name in ("geopipe_loss", "geopipe_step_seconds", "geopipe_tokens_per_second"):
            if not value(last, name) > 0:
                fail(name + " not positive")
        for share in ("busy", "bubble", "wait"):
            total = 0
            for stage in (0, 1):
                v = value(last, "geopipe_stage_%s_share" % share, '{stage="%d"}' % stage)
                if not 0 <= v <= 1:
                    fail("share out of [0, 1]: %s %d %g" % (share, stage, v))
        for stage in (0, 1):
            busy = sum(value(last, "geopipe_stage_%s_share" % k, '{stage="%d"}' % stage)
                       for k in ("busy", "bubble", "wait"))
            if not 0 < busy <= 1.0001:
                fail("stage %d shares sum to %g" % (stage, busy))
        for rank in (0, 1):
            labels = '{rank="%d",stage="%d",replica="0"}' % (rank, rank)
            if not value(last, "geopipe_tasklet_sent_bytes_total", labels) > 0:
                fail("no bytes sent by rank %d" % rank)
            if not value(last, "geopipe_tasklet_send_mbps", labels) > 0:
                fail("no send rate for rank %d" % rank)
        if last["geopipe_tasklet_sent_bytes_total"][0] != "counter":
            fail("bytes are not a counter")
        # Per link: both directions of the pipeline carry bytes, the links
        # from a rank sum to its sent bytes, and each has a rate.
        links = {}
        for labels, v in last["geopipe_link_sent_bytes_total"][1]:
            m = re.match(r'^\{from="(\d+)",to="(\d+)"\}$', labels)
            if not m:
                fail("link labels " + labels)
            links[(int(m.group(1)), int(m.group(2)))] = v
        if last["geopipe_link_sent_bytes_total"][0] != "counter":
            fail("link bytes are not a counter")
        for rank in (0, 1):
            labels = '{rank="%d",stage="%d",replica="0"}' % (rank, rank)
            sent = value(last, "geopipe_tasklet_sent_bytes_total", labels)
            on_links = sum(v for (f, _), v in links.items() if f == rank)
            if on_links != sent:
                fail("links from rank %d sum to %g, not its %g sent bytes" % (rank, on_links, sent))
            other = 1 - rank
            if not links.get((rank, other), 0) > 0:
                fail("no bytes on the link %d -> %d: %s" % (rank, other, links))
            if not value(last, "geopipe_link_send_mbps", '{from="%d",to="%d"}' % (rank, other)) > 0:
                fail("no rate on the link %d -> %d" % (rank, other))
        act = '{kind="activations"}'
        raw, wire = value(last, "geopipe_raw_bytes_total", act), value(last, "geopipe_wire_bytes_total", act)
        if not raw > 0 or abs(value(last, "geopipe_compression_ratio", act) - raw / wire) > 1e-9 * raw:
            fail("compression ratio is not raw / wire bytes")
        if verb == "launch":
            if value(last, "geopipe_workers_alive") != 2:
                fail("geopipe_workers_alive")
            value(last, "geopipe_recoveries_total")
        elif "geopipe_workers_alive" in last:
            fail("train has no workers")

        check_plot(plot, STEPS)

        # The metrics file: every step's link_bytes rows sum, by sender, to
        # its sent_bytes_by_rank.
        with open(os.path.join(tmp, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f if line.strip()]
        if len(records) != STEPS:
            fail("%d metrics lines for %d steps" % (len(records), STEPS))
        for r in records:
            by_rank = r["sent_bytes_by_rank"]
            on_links = [0] * len(by_rank)
            for row in r["link_bytes"]:
                if set(row) != {"from", "to", "bytes"} or not row["bytes"] > 0:
                    fail("link_bytes row %s" % row)
                on_links[row["from"]] += row["bytes"]
            if on_links != by_rank:
                fail("step %d: link_bytes sum to %s by sender, sent_bytes_by_rank is %s"
                     % (r["step"], on_links, by_rank))
            if not any(row["from"] == 0 and row["to"] == 1 for row in r["link_bytes"]):
                fail("step %d: no bytes on the link 0 -> 1: %s" % (r["step"], r["link_bytes"]))

        # A port in use: refused, naming the field.
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            with open(job, "w") as f:
                f.write(JOB % (2, busy.getsockname()[1]))
            r = subprocess.run([geopipe, verb, job], cwd=tmp, capture_output=True, text=True,
                               timeout=120)
            if r.returncode != 1 or "logging.metrics_port" not in r.stderr:
                fail("port in use: exit %d\n%s%s" % (r.returncode, r.stdout, r.stderr))
    print("ok: steps seen %s; sample:\n%s" % (steps_seen, "\n".join(text.split("\n")[:12])))


if __name__ == "__main__":
    main()
