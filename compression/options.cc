// Job-spec -> compression options, with field-naming ConfigErrors.
#include "compression/options.h"

#include "geopipe/error.h"

namespace geopipe::compression {

Granularity parseGranularity(const std::string& s, const char* field) {
  if (s == "tensor") return Granularity::TENSOR;
  if (s == "channel") return Granularity::CHANNEL;
  if (s == "group") return Granularity::GROUP;
  GEOPIPE_THROW(ConfigError, field, ": unknown granularity '", s,
                "', expected tensor | channel | group");
}

Rounding parseRounding(const std::string& s, const char* field) {
  if (s == "nearest") return Rounding::NEAREST;
  if (s == "stochastic") return Rounding::STOCHASTIC;
  GEOPIPE_THROW(ConfigError, field, ": unknown rounding '", s, "', expected nearest | stochastic");
}

namespace {
QuantizerOptions quantizerOf(int bits, const std::string& gran, int group, const std::string& rnd,
                             uint64_t seed, const char* prefix) {
  QuantizerOptions q;
  q.bits = bits;
  q.granularity = parseGranularity(gran, (std::string(prefix) + ".granularity").c_str());
  q.group_size = group;
  q.rounding = parseRounding(rnd, (std::string(prefix) + ".rounding").c_str());
  q.seed = seed;
  GEOPIPE_CHECK(bits >= 1 && bits <= 8, ConfigError, prefix, ".bits must be in 1..8, got ", bits);
  GEOPIPE_CHECK(q.granularity != Granularity::GROUP || group >= 1, ConfigError, prefix,
                ".group_size must be >= 1, got ", group);
  return q;
}
}  // namespace

Method uncompressedMethod(const std::string& compute_dtype) {
  if (compute_dtype == "bf16") return Method::BF16;
  if (compute_dtype == "fp16") return Method::FP16;
  return Method::RAW;
}

ActivationCompressionOptions activationOptionsFromSpec(const ActivationCompressionSpec& spec,
                                                       uint64_t seed,
                                                       const std::string& store_name,
                                                       const std::string& compute_dtype) {
  const char* f = "compression.activations";
  ActivationCompressionOptions o;
  const QuantizerOptions q =
      quantizerOf(spec.bits, spec.granularity, spec.group_size, spec.rounding, seed, f);
  if (spec.method == "none") {
    o.codec.method = uncompressedMethod(compute_dtype);
  } else if (spec.method == "fp16") {
    o.codec.method = Method::FP16;
  } else if (spec.method == "direct") {
    o.codec.method = Method::QUANTIZED;
    o.codec.quantizer = q;
  } else if (spec.method == "acsgd") {
    o.acsgd = true;
    o.delta.quantizer = q;
    if (spec.buffer_format == "fp16") {
      o.delta.buffer_format = BufferFormat::FP16;
    } else if (spec.buffer_format == "quantized") {
      o.delta.buffer_format = BufferFormat::QUANTIZED;
      GEOPIPE_CHECK(spec.buffer_bits >= 1 && spec.buffer_bits <= 8, ConfigError,
                    "compression.activations.buffer_bits must be in 1..8, got ", spec.buffer_bits);
      o.delta.buffer_bits = spec.buffer_bits;
    } else {
      GEOPIPE_THROW(ConfigError, "compression.activations.buffer_format: unknown '",
                    spec.buffer_format, "', expected fp16 | quantized");
    }
    if (spec.buffer_store == "memory") {
      o.store.kind = StoreKind::MEMORY;
    } else if (spec.buffer_store == "mmap") {
      o.store.kind = StoreKind::MMAP;
      GEOPIPE_CHECK(!spec.buffer_dir.empty(), ConfigError,
                    "compression.activations.buffer_dir must be set when buffer_store is mmap");
      o.store.path = spec.buffer_dir + "/" + store_name + ".acsgd";
    } else {
      GEOPIPE_THROW(ConfigError, "compression.activations.buffer_store: unknown '",
                    spec.buffer_store, "', expected memory | mmap");
    }
    GEOPIPE_CHECK(spec.buffer_budget_gb > 0, ConfigError,
                  "compression.activations.buffer_budget_gb must be > 0, got ",
                  spec.buffer_budget_gb);
    o.store.budget_bytes = static_cast<uint64_t>(spec.buffer_budget_gb * (1ull << 30));
  } else {
    GEOPIPE_THROW(ConfigError, "compression.activations.method: unknown '", spec.method,
                  "', expected none | fp16 | acsgd | direct");
  }
  return o;
}

TensorCodecOptions backwardOptionsFromSpec(const BackwardCompressionSpec& spec, uint64_t seed,
                                           const std::string& compute_dtype) {
  TensorCodecOptions o;
  if (spec.method == "none") {
    o.method = uncompressedMethod(compute_dtype);
  } else if (spec.method == "fp16") {
    o.method = Method::FP16;
  } else if (spec.method == "quantize") {
    o.method = Method::QUANTIZED;
    o.quantizer = quantizerOf(spec.bits, spec.granularity, spec.group_size, spec.rounding, seed,
                              "compression.backward");
  } else {
    GEOPIPE_THROW(ConfigError, "compression.backward.method: unknown '", spec.method,
                  "', expected none | fp16 | quantize");
  }
  return o;
}

GradientCompressorOptions gradientOptionsFromSpec(const GradientCompressionSpec& spec,
                                                  uint64_t seed) {
  GradientCompressorOptions o;
  o.seed = seed;
  o.error_feedback = spec.error_feedback;
  if (spec.method == "none") {
    o.method = GradientMethod::NONE;
  } else if (spec.method == "fp16") {
    o.method = GradientMethod::FP16;
  } else if (spec.method == "quantize") {
    o.method = GradientMethod::QUANTIZE;
    GEOPIPE_CHECK(spec.bits >= 1 && spec.bits <= 8, ConfigError,
                  "compression.gradients.bits must be in 1..8, got ", spec.bits);
    o.quantizer.bits = spec.bits;
  } else if (spec.method == "topk") {
    o.method = GradientMethod::TOPK;
    GEOPIPE_CHECK(spec.ratio > 0 && spec.ratio <= 1, ConfigError,
                  "compression.gradients.ratio must be in (0, 1], got ", spec.ratio);
    o.ratio = spec.ratio;
  } else if (spec.method == "powersgd") {
    o.method = GradientMethod::POWERSGD;
    GEOPIPE_CHECK(spec.rank >= 1, ConfigError, "compression.gradients.rank must be >= 1, got ",
                  spec.rank);
    o.rank = spec.rank;
  } else {
    GEOPIPE_THROW(ConfigError, "compression.gradients.method: unknown '", spec.method,
                  "', expected none | fp16 | quantize | topk | powersgd");
  }
  return o;
}

}  // namespace geopipe::compression
