// Writes the seed corpora of the fuzz targets into DIR/<target>/: the
// example jobs and topologies, well-formed compressed tensors of every
// method, valid peer-stream chunk sequences, one valid request of each
// coordinator RPC, safetensors files of each dtype, an index and a
// folder, pipeline frames of each codec, gradient bundles and NCCL
// announcements. Usage: make_fuzz_seeds DIR (normally fuzz/corpus).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "compression/activation_buffer.h"
#include "compression/delta_compressor.h"
#include "compression/gradient_compressor.h"
#include "compression/wire_format.h"
#include "fuzz/fuzz_input.h"
#include "proto/coordinator.pb.h"
#include "proto/peer.pb.h"
#include "src/formats/safetensors.h"
#include "src/runtime/boundary_codec.h"
#include "src/runtime/gradient_bundle.h"
#include "src/transport/nccl/announcement.h"

namespace fs = std::filesystem;
using namespace geopipe;
using namespace geopipe::compression;
using fuzz::lengthPrefixed;

namespace {

void writeSeed(const fs::path& dir, const std::string& name, const std::string& bytes) {
  fs::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary) << bytes;
}

std::string str(const std::vector<uint8_t>& v) {
  return std::string(v.begin(), v.end());
}

std::string readFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

std::string message(const CompressedMessage& m) {
  return lengthPrefixed(str(m.header)) + lengthPrefixed(str(m.payload));
}

void configSeeds(const fs::path& out) {
  const fs::path src = GEOPIPE_SOURCE_DIR;
  for (const char* sub : {"examples/topologies", "examples/jobs"}) {
    const char selector = std::string(sub).find("jobs") != std::string::npos ? 1 : 0;
    for (const auto& e : fs::directory_iterator(src / sub)) {
      writeSeed(out, std::string(selector ? "job-" : "topology-") + e.path().filename().string(),
                std::string(1, selector) + readFile(e.path()));
    }
  }
}

void wireSeeds(const fs::path& out) {
  std::vector<float> x(4 * 2 * 8);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.25f * static_cast<float>(i % 9) - 1.0f;
  const std::vector<int64_t> shape = {4, 2, 8};
  TensorCodecOptions raw;
  raw.method = Method::RAW;
  TensorCodecOptions fp16;
  fp16.method = Method::FP16;
  TensorCodecOptions q4;
  q4.quantizer.bits = 4;
  TensorCodecOptions q3group;
  q3group.quantizer.bits = 3;
  q3group.quantizer.granularity = Granularity::GROUP;
  q3group.quantizer.group_size = 5;
  const CompressedMessage m_raw = encodeTensor(raw, x.data(), shape);
  const CompressedMessage m_fp16 = encodeTensor(fp16, x.data(), shape);
  const CompressedMessage m_q4 = encodeTensor(q4, x.data(), shape);
  const CompressedMessage m_q3 = encodeTensor(q3group, x.data(), shape);
  const CompressedMessage m_topk = encodeTopK(x.data(), shape, 0.2);
  writeSeed(out, "header-q4", std::string(1, 0) + str(m_q4.header));
  writeSeed(out, "payload-q4", std::string(1, 1) + message(m_q4));
  writeSeed(out, "tensor-raw", std::string(1, 2) + message(m_raw));
  writeSeed(out, "tensor-fp16", std::string(1, 2) + message(m_fp16));
  writeSeed(out, "tensor-q3-group", std::string(1, 2) + message(m_q3));
  writeSeed(out, "dense-topk", std::string(1, 3) + message(m_topk));
  writeSeed(out, "combine-q4-topk",
            std::string(1, 4) + std::string(1, 1) + message(m_q4) + message(m_topk));
  // AC-SGD: a first visit (fp16) and a delta for the receiver's samples
  // 0..3, with the options byte the target decodes (4 bits, channel, fp16).
  DeltaCompressorOptions dopt;
  dopt.quantizer.bits = 4;
  DeltaSender tx(dopt, makeBufferStore({}));
  const int64_t ids[4] = {0, 1, 2, 3};
  const CompressedMessage first = tx.encode(ids, x.data(), shape);
  for (auto& v : x) v += 0.1f;
  const CompressedMessage delta = tx.encode(ids, x.data(), shape);
  const std::string id_bytes = std::string(1, 4) + std::string("\0\1\2\3", 4);
  writeSeed(out, "acsgd-first", std::string(1, 5) + std::string(1, 3) + id_bytes + message(first));
  writeSeed(out, "acsgd-delta", std::string(1, 5) + std::string(1, 3) + id_bytes + message(delta));
  // PowerSGD factors of the target's 6x4 gradient, rank 1.
  GradientCompressorOptions popt;
  popt.method = GradientMethod::POWERSGD;
  popt.rank = 1;
  PowerSgdCompressor ps(popt);
  std::vector<float> g(24, 0.5f);
  const CompressedMessage p = ps.computeP(g.data(), {6, 4});
  std::vector<CompressedMessage> all_p = {p, p};
  const CompressedMessage q = ps.computeQ(all_p);
  writeSeed(out, "powersgd", std::string(1, 6) + std::string(1, 0) + message(p) + message(q));
  // The buffer store's checkpoint file.
  const fs::path tmp = fs::temp_directory_path() / "geopipe-seed-store.bin";
  tx.store().save(tmp.string());
  writeSeed(out, "store-file", std::string(1, 7) + readFile(tmp));
  fs::remove(tmp);
}

geopipe::v1::PeerChunk chunk(uint64_t seq, uint64_t offset, uint64_t total, const std::string& d) {
  geopipe::v1::PeerChunk c;
  c.set_protocol_version(geopipe::v1::PEER_PROTOCOL_CURRENT);
  c.set_source_rank(1);
  c.set_destination_rank(0);
  c.set_job_token("fuzz-job");
  c.mutable_tag()->set_channel(1);
  c.mutable_tag()->set_step(2);
  c.set_sequence(seq);
  c.set_offset(offset);
  c.set_total_size(total);
  c.set_data(d);
  return c;
}

std::string frame(const geopipe::v1::PeerChunk& c) {
  return std::string(1, 0) + lengthPrefixed(c.SerializeAsString());
}

void peerSeeds(const fs::path& out) {
  // Limits byte 0x8c: large budget, max_message_bytes 64 KiB.
  const std::string limits(1, static_cast<char>(0x8c));
  // Receive (op 2) of rank 1, ACTIVATION, step 2, micro-batch 0; poll (op 3).
  const std::string post = std::string(1, 2) + std::string("\0\2\0\1", 4);
  const std::string poll(1, 3);
  auto goodbye = chunk(2, 0, 0, "");
  goodbye.set_end_of_stream(true);
  writeSeed(out, "one-message", limits + frame(chunk(0, 0, 5, "hello")) + post + poll);
  writeSeed(out, "two-chunks-two-messages",
            limits + post + frame(chunk(0, 0, 8, "abcd")) + frame(chunk(0, 4, 8, "efgh")) +
                frame(chunk(1, 0, 0, "")) + frame(goodbye) + poll + post + poll);
  writeSeed(out, "new-stream",
            limits + frame(chunk(0, 0, 3, "abc")) + std::string(1, 1) +
                frame(chunk(0, 0, 2, "de")) + post + poll + post + poll);
  writeSeed(out, "small-budget",
            std::string(1, 0x0c) + frame(chunk(0, 0, 100, std::string(100, 'x'))) +
                frame(chunk(1, 0, 100, std::string(100, 'y'))) + post + poll);
}

void coordinatorSeeds(const fs::path& out) {
  namespace pb = geopipe::v1;
  pb::RegisterRequest reg;
  reg.set_protocol_version(pb::COORDINATOR_PROTOCOL_CURRENT);
  reg.set_device("virginia/1");
  reg.set_hostname("worker-1");
  reg.set_pid(4242);
  reg.set_listen_host("10.0.0.2");
  writeSeed(out, "register", std::string(1, 0) + reg.SerializeAsString());
  reg.set_device("3");
  writeSeed(out, "register-index", std::string(1, 0) + reg.SerializeAsString());
  pb::AddressRequest addr;
  addr.set_rank(2);
  addr.set_address("10.0.0.2:7431");
  writeSeed(out, "address", std::string(1, 1) + addr.SerializeAsString());
  pb::StepReport step;
  step.set_rank(3);
  step.set_step(17);
  step.set_has_loss(true);
  step.set_loss(2.5);
  step.set_lr(1e-3);
  step.set_seconds(0.8);
  step.set_compute_seconds(0.5);
  step.set_comm_wait_seconds(0.2);
  step.set_activation_raw_bytes(1 << 20);
  step.set_activation_wire_bytes(1 << 17);
  writeSeed(out, "step", std::string(1, 2) + step.SerializeAsString());
  pb::CheckpointReport ckpt;
  ckpt.set_rank(1);
  ckpt.set_next_step(20);
  ckpt.add_files("rank-1.pt");
  ckpt.add_files("rank-1.acsgd-send");
  writeSeed(out, "checkpoint", std::string(1, 3) + ckpt.SerializeAsString());
  pb::Heartbeat hb;
  hb.set_rank(0);
  hb.set_step(-1);
  writeSeed(out, "heartbeat", std::string(1, 4) + hb.SerializeAsString());
  pb::FinishRequest fin;
  fin.set_rank(2);
  fin.set_ok(false);
  fin.set_error("grpc: recv on rank 2 from rank 1 timed out");
  fin.set_error_type("TimeoutError");
  writeSeed(out, "finish", std::string(1, 5) + fin.SerializeAsString());
}

// Inputs of fuzz/safetensors_fuzzer.cc: a selector byte, then a file of
// each dtype (0: in memory, 4: through the mmap path), an index (1), a
// folder (2: length-prefixed index, then its first shard) and the writer's
// tensors (3).
void safetensorsSeeds(const fs::path& out) {
  namespace st = geopipe::formats;
  const fs::path tmp = fs::temp_directory_path() / "geopipe-seed.safetensors";
  const std::vector<float> x = {1.0f, -2.5f, 0.1f, 65504.0f, 1e-6f, -0.0f};
  auto file = [&](const std::vector<st::TensorToWrite>& t, st::DType dt) {
    st::writeSafetensors(tmp.string(), t, dt, {{"format", "pt"}});
    const std::string bytes = readFile(tmp);
    fs::remove(tmp);
    return bytes;
  };
  for (st::DType dt : {st::DType::F32, st::DType::F16, st::DType::BF16}) {
    const std::string bytes = file({{"w", {2, 3}, x.data()}, {"b", {}, x.data()}}, dt);
    writeSeed(out, std::string("file-") + st::toString(dt), std::string(1, 0) + bytes);
    writeSeed(out, std::string("mapped-") + st::toString(dt), std::string(1, 4) + bytes);
  }
  const int64_t ids[2] = {3, -1};
  const std::string mixed = file(
      {st::TensorToWrite::rawBytes("ids", {2}, "I64", {reinterpret_cast<const uint8_t*>(ids), 16}),
       {"w", {3}, x.data()},
       st::TensorToWrite::rawBytes("mask", {2}, "BOOL",
                                   {reinterpret_cast<const uint8_t*>("\1\0"), 2}),
       {"empty", {0, 4}, nullptr}},
      st::DType::BF16);
  writeSeed(out, "file-mixed-dtypes", std::string(1, 0) + mixed);
  const std::string index =
      "{\"metadata\": {\"total_size\": 28}, \"weight_map\": {"
      "\"w\": \"model-00001-of-00002.safetensors\", "
      "\"b\": \"model-00001-of-00002.safetensors\", "
      "\"head\": \"model-00002-of-00002.safetensors\"}}";
  writeSeed(out, "index", std::string(1, 1) + index);
  const std::string shard = file({{"w", {2, 3}, x.data()}, {"b", {}, x.data()}}, st::DType::F32);
  // "head" lives in the second shard, which the target never writes.
  writeSeed(out, "folder-missing-shard", std::string(1, 2) + lengthPrefixed(index) + shard);
  const std::string one_shard = "{\"weight_map\": {\"w\": \"model-00001-of-00002.safetensors\"}}";
  writeSeed(out, "folder", std::string(1, 2) + lengthPrefixed(one_shard) + shard);
  // Writer: F16, two tensors "a" [2, 3] and "b" [], then float bytes.
  std::string floats(reinterpret_cast<const char*>(x.data()), 4 * x.size());
  writeSeed(out, "write-f16",
            std::string("\3\1\1", 3) + lengthPrefixed("a") + std::string("\2\2\3", 3) +
                lengthPrefixed("b") + std::string(1, 0) + floats);
}

// Inputs of fuzz/pipeline_frame_fuzzer.cc: a selector byte (0: the bare
// decoder, 1..3: the receiver of that codec), then a frame for step 2,
// micro-batch 1, samples {7, 9}, shape [2, 4], as the target expects.
void pipelineFrameSeeds(const fs::path& out) {
  namespace rt = geopipe::runtime;
  std::vector<float> x(8);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.3f * static_cast<float>(i) - 1.0f;
  ActivationCompressionSpec none, fp16;
  fp16.method = "fp16";
  BackwardCompressionSpec quantize;
  quantize.method = "quantize";
  quantize.bits = 8;
  const std::vector<int64_t> ids = {7, 9};
  auto frame = [&](std::unique_ptr<rt::BoundaryEncoder> enc) {
    return str(enc->encode(2, 1, 4, ids, x.data(), {2, 4}));
  };
  const std::string raw = frame(rt::BoundaryEncoder::forActivations(none, 1, "seed"));
  writeSeed(out, "frame-raw", std::string(1, 0) + raw);
  writeSeed(out, "activations-none", std::string(1, 1) + raw);
  writeSeed(out, "activations-fp16",
            std::string(1, 2) + frame(rt::BoundaryEncoder::forActivations(fp16, 1, "seed")));
  writeSeed(out, "gradients-quantize-8",
            std::string(1, 3) + frame(rt::BoundaryEncoder::forGradients(quantize, 1)));
}

// Inputs of fuzz/gradient_bundle_fuzzer.cc: the expected message count,
// then a bundle of that many compressed gradients (top-k, 8-bit, none).
void gradientBundleSeeds(const fs::path& out) {
  std::vector<float> g(6 * 4);
  for (size_t i = 0; i < g.size(); ++i) g[i] = 0.1f * static_cast<float>(i % 5) - 0.2f;
  TensorCodecOptions q8;
  q8.quantizer.bits = 8;
  const std::vector<CompressedMessage> two = {encodeTopK(g.data(), {6, 4}, 0.25),
                                              encodeTensor(q8, g.data(), {6, 4})};
  writeSeed(out, "empty", std::string(1, 0) + str(geopipe::runtime::encodeGradientBundle({})));
  writeSeed(out, "topk-and-q8",
            std::string(1, 2) + str(geopipe::runtime::encodeGradientBundle(two)));
}

// Inputs of fuzz/relay_request_fuzzer.cc: what gRPC's HTTP CONNECT
// handshaker sends, with and without a Host line, and a dial-back.
void relayRequestSeeds(const fs::path& out) {
  writeSeed(out, "connect",
            "CONNECT gpu7.example.org:3 HTTP/1.1\r\nHost: gpu7.example.org:3\r\n\r\n");
  writeSeed(out, "connect-v6", "CONNECT [::1]:1 HTTP/1.1\r\n\r\n");
  writeSeed(out, "dial-back", "GEOPIPE-RELAY 3f2a9c0d11e4b7a85c6d0e1f2a3b4c5d\n");
}

// Inputs of fuzz/nccl_announcement_fuzzer.cc: the limit byte (2^20), then
// an announcement of each channel.
void ncclAnnouncementSeeds(const fs::path& out) {
  namespace tr = geopipe::transport;
  const tr::Channel channels[] = {tr::Channel::ACTIVATION, tr::Channel::ACTIVATION_GRAD,
                                  tr::Channel::GRADIENT, tr::Channel::CONTROL};
  for (tr::Channel ch : channels) {
    const tr::NcclAnnouncement a{tr::Tag{ch, 5, 1, 2}, 4096};
    writeSeed(out, std::string("announce-") + tr::channelName(ch),
              std::string(1, 20) + str(tr::encodeNcclAnnouncement(a)));
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_fuzz_seeds DIR  (writes DIR/<target>/ seed files)\n";
    return 2;
  }
  const fs::path out = argv[1];
  configSeeds(out / "config");
  wireSeeds(out / "wire_format");
  peerSeeds(out / "peer_chunks");
  coordinatorSeeds(out / "coordinator_requests");
  safetensorsSeeds(out / "safetensors");
  pipelineFrameSeeds(out / "pipeline_frame");
  gradientBundleSeeds(out / "gradient_bundle");
  ncclAnnouncementSeeds(out / "nccl_announcement");
  relayRequestSeeds(out / "relay_request");
  std::cout << "seeds written under " << out << "\n";
  return 0;
}
