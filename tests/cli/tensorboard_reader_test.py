#!/usr/bin/python3
"""geopipe's TensorBoard event file read back by a reader of its own.

Runs `geopipe train` on a tiny job with logging.tensorboard_dir and
logging.metrics_file, then reads the event file without any geopipe code:
the Event and Summary messages come from TensorBoard's published schema
(tensorboard/compat/proto/event.proto and summary.proto, the fields used
here, same numbers and types), compiled with protoc --python_out; the
TFRecord framing is parsed here and both masked CRC-32Cs of every record are
checked with a table-driven CRC-32C (Castagnoli, reflected 0x82F63B78) of
this file. The scalars must equal the run's JSON-lines metrics.

Usage: tensorboard_reader_test.py GEOPIPE_BINARY PROTOC. Exit 77 (skipped)
without Debian's python3-protobuf.
"""
import glob
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

SKIP = 77

# The published schema's messages, trimmed to the fields geopipe writes
# (proto3 readers skip the rest; numbers and types as published).
EVENT_PROTO = """
syntax = "proto3";
package tensorboard;
message SummaryMetadata {
  message PluginData { string plugin_name = 1; bytes content = 2; }
  PluginData plugin_data = 1;
  string display_name = 2;
  string summary_description = 3;
}
message Summary {
  message Value {
    string node_name = 7;
    string tag = 1;
    SummaryMetadata metadata = 9;
    oneof value {
      float simple_value = 2;
      bytes obsolete_old_style_histogram = 3;
    }
  }
  repeated Value value = 1;
}
message Event {
  double wall_time = 1;
  int64 step = 2;
  oneof what {
    string file_version = 3;
    bytes graph_def = 4;
    Summary summary = 5;
  }
}
"""

JOB = """name: tb-tiny
model: {preset: none, layers: 2, hidden: 16, heads: 2, seq_len: 8, vocab: 16}
data: {kind: synthetic, num_samples: 48, val_fraction: 0.25}
training:
  steps: 6
  global_batch: 4
  micro_batch: 1
  eval_every: 3
  grad_clip: 1.0
  optimizer: {kind: adamw, lr: 1.0e-2}
  lr_schedule: {kind: cosine, warmup_steps: 2}
  seed: 3
parallelism: {pipeline_stages: 2, data_parallel: 1}
transport: {emulate_links: false}
topology:
  name: one
  sites: [{name: local, devices: 2, intra: {latency_ms: 0, bandwidth_gbps: 100}}]
logging: {metrics_file: metrics.jsonl, tensorboard_dir: tb}
"""


def crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


TABLE = crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc = TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked(crc):
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records(path):
    with open(path, "rb") as f:
        data = f.read()
    at = 0
    while at < len(data):
        if len(data) - at < 12:
            raise AssertionError(f"{path}: {len(data) - at} stray bytes at offset {at}")
        header = data[at:at + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[at + 8:at + 12])
        if masked(crc32c(header)) != length_crc:
            raise AssertionError(f"{path}: bad length CRC at offset {at}")
        body = data[at + 12:at + 12 + length]
        (body_crc,) = struct.unpack("<I", data[at + 12 + length:at + 16 + length])
        if len(body) != length or masked(crc32c(body)) != body_crc:
            raise AssertionError(f"{path}: bad data CRC at offset {at}")
        yield body
        at += 16 + length


def close(a, b):
    # simple_value is a float32.
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


def main():
    geopipe, protoc = os.path.abspath(sys.argv[1]), sys.argv[2]
    try:
        import google.protobuf  # noqa: F401
    except ImportError:
        print("SKIPPED: python3-protobuf is missing (apt-get install python3-protobuf)")
        return SKIP
    # Self-check of the reader's CRC: the CRC-32C check value.
    assert crc32c(b"123456789") == 0xE3069283
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "event.proto"), "w") as f:
            f.write(EVENT_PROTO)
        subprocess.run([protoc, "--proto_path", tmp, "--python_out", tmp,
                        os.path.join(tmp, "event.proto")], check=True)
        sys.path.insert(0, tmp)
        import event_pb2

        with open(os.path.join(tmp, "job.yaml"), "w") as f:
            f.write(JOB)
        run = subprocess.run([geopipe, "train", os.path.join(tmp, "job.yaml")], cwd=tmp,
                             capture_output=True, text=True, timeout=240)
        if run.returncode != 0:
            raise AssertionError(f"geopipe train failed ({run.returncode}):\n{run.stdout}{run.stderr}")
        files = glob.glob(os.path.join(tmp, "tb", "events.out.tfevents.*"))
        assert len(files) == 1, files
        name = os.path.basename(files[0]).split(".")
        assert name[3].isdigit() and abs(int(name[3]) - __import__("time").time()) < 600, name
        assert ".".join(name[4:]) == os.uname().nodename, name

        events = []
        for body in records(files[0]):
            e = event_pb2.Event()
            e.ParseFromString(body)
            events.append(e)
        assert events[0].WhichOneof("what") == "file_version", events[0]
        assert events[0].file_version == "brain.Event:2", events[0]
        with open(os.path.join(tmp, "metrics.jsonl")) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        steps = events[1:]
        assert len(steps) == len(lines) == 6, (len(steps), len(lines))
        tags = {"loss": "loss", "lr": "lr", "grad_norm": "grad_norm",
                "tokens_per_second": "tokens_per_second", "step_seconds": "seconds",
                "val_loss": "val_loss"}
        evaluated = 0
        for e, line in zip(steps, lines):
            assert e.step == line["step"], (e.step, line["step"])
            assert abs(e.wall_time - line["unix_time"]) < 5, (e.wall_time, line["unix_time"])
            values = {v.tag: v.simple_value for v in e.summary.value}
            want = {tag: line[key] for tag, key in tags.items() if key in line}
            assert set(values) == set(want), (sorted(values), sorted(want))
            for tag, value in want.items():
                assert close(values[tag], value), (e.step, tag, values[tag], value)
            evaluated += "val_loss" in values
        assert evaluated == 2, evaluated  # after steps 3 and 6
        assert lines[0]["grad_norm"] > 0
    print(f"ok: {len(steps)} step events + file_version, CRCs and scalars match metrics.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
