// safetensors: round trips for every dtype, one rejection per validation rule
// (hand-built byte images), atomic saves that fail cleanly, and bit-exact
// interop with files written by the reference Python package
// (tests/data/make_safetensors_fixtures.py).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>

#include "io/file.h"
#include "qkv/qkv.h"

namespace qkv::safetensors {
namespace {

namespace fs = std::filesystem;

std::vector<uint8_t> bytes_of(const Tensor& t) {
  const Tensor c = t.contiguous();
  const auto* p = static_cast<const uint8_t*>(c.raw_data());
  return std::vector<uint8_t>(p, p + c.nbytes());
}

std::vector<uint8_t> read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

void write_file(const fs::path& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

// Random values of every dtype; the integer dtypes get negative values too.
Tensor sample(const Shape& shape, DType dtype, uint64_t seed) {
  Generator gen(seed);
  if (is_floating(dtype)) return randn(shape, gen, dtype);
  std::vector<double> values(static_cast<size_t>(shape_numel(shape)));
  const uint64_t range = dtype == DType::boolean ? 2 : 2001;
  const int64_t shift = dtype == DType::boolean ? 0 : 1000;
  for (double& v : values)
    v = static_cast<double>(static_cast<int64_t>(gen.next_u64() % range) - shift);
  return Tensor::from_values(values, shape, dtype);
}

File reload(const std::map<std::string, Tensor>& tensors,
            const std::map<std::string, std::string>& metadata = {}) {
  const std::vector<uint8_t> bytes = serialize(tensors, metadata);
  return File::from_bytes(bytes.data(), bytes.size());
}

// A byte image: the length prefix (or a lie about it), the header, filler data.
std::vector<uint8_t> image(std::string_view header, size_t data_bytes = 0,
                           std::optional<uint64_t> header_length = std::nullopt) {
  const uint64_t n = header_length.value_or(header.size());
  std::vector<uint8_t> out;
  out.reserve(8 + header.size() + data_bytes);
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(n >> (8 * i)));  // little-endian
  for (char c : header) out.push_back(static_cast<uint8_t>(c));
  out.insert(out.end(), data_bytes, 0xab);
  return out;
}

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  uint64_t begin, uint64_t end) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(end) + "]}";
}

// A fresh directory per test, removed afterwards.
class SafetensorsFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    std::random_device rd;
    dir_ = fs::temp_directory_path() / ("qkv_safetensors_test_" + std::to_string(rd()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_))
      names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }
  fs::path dir_;
};

// ---- round trips -----------------------------------------------------------------

TEST(SafetensorsRoundTrip, EveryDTypeKeepsBytesShapeAndDType) {
  for (int i = 0; i < kNumDTypes; ++i) {
    const auto dtype = static_cast<DType>(i);
    SCOPED_TRACE(dtype_name(dtype));
    const Tensor t = sample({3, 5, 2}, dtype, 100 + static_cast<uint64_t>(i));
    const File file = reload({{"t", t}});
    const Tensor back = file.get("t");
    EXPECT_EQ(back.dtype(), dtype);
    EXPECT_EQ(back.shape(), t.shape());
    EXPECT_EQ(bytes_of(back), bytes_of(t));
    EXPECT_EQ(back.to_values(), t.to_values());
    EXPECT_EQ(file.info("t").end - file.info("t").begin, t.nbytes());
  }
}

TEST(SafetensorsRoundTrip, ZeroElementAndZeroDimTensors) {
  for (int i = 0; i < kNumDTypes; ++i) {
    const auto dtype = static_cast<DType>(i);
    SCOPED_TRACE(dtype_name(dtype));
    const Tensor scalar = Tensor::full({}, 1.0, dtype);
    const File file = reload({{"scalar", scalar},
                              {"empty", Tensor::empty({0}, dtype)},
                              {"empty3", Tensor::empty({2, 0, 3}, dtype)}});
    EXPECT_EQ(file.get("scalar").shape(), Shape{});
    EXPECT_EQ(file.get("scalar").item(), 1.0);
    EXPECT_EQ(file.get("empty").shape(), Shape{0});
    EXPECT_EQ(file.get("empty3").shape(), (Shape{2, 0, 3}));
    EXPECT_EQ(file.get("empty3").numel(), 0);
    EXPECT_EQ(file.info("empty3").begin, file.info("empty3").end);
  }
}

TEST(SafetensorsRoundTrip, NonContiguousInputsAreWrittenAsTheirValues) {
  const Tensor base = sample({4, 6}, DType::f32, 7);
  const std::map<std::string, Tensor> views = {
      {"transposed", base.transpose(0, 1)},
      {"strided", base.slice(1, 1, 6, 2)},
      {"selected", base.select(1, 3)},
      {"broadcast", base.select(0, 2).unsqueeze(0).expand({3, 6})},
      {"bf16_view", sample({5, 4}, DType::bf16, 8).permute({1, 0}).slice(0, 1, 4)},
  };
  std::map<std::string, Tensor> copies;
  for (const auto& [name, t] : views) {
    if (name != "selected") {
      EXPECT_FALSE(t.is_contiguous()) << name;
    }
    copies[name] = t.clone();
  }
  EXPECT_EQ(serialize(views), serialize(copies));
  const File file = reload(views);
  for (const auto& [name, t] : views) {
    EXPECT_EQ(file.get(name).shape(), t.shape()) << name;
    EXPECT_EQ(file.get(name).to_values(), t.to_values()) << name;
  }
}

TEST(SafetensorsRoundTrip, MetadataRoundTrips) {
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"},
      {"", "empty key"},
      {"empty value", ""},
      {"quote\"back\\slash\ncontrol\x01", "caf\xc3\xa9 \xf0\x9f\x98\x80"}};
  const File file = reload({{"w", Tensor::ones({2})}}, metadata);
  EXPECT_EQ(file.metadata(), metadata);
  EXPECT_TRUE(reload({{"w", Tensor::ones({2})}}).metadata().empty());
  EXPECT_EQ(reload({}, metadata).metadata(), metadata);
  // No tensors and no metadata: "{}" padded to 8 bytes, as the reference writes it.
  const std::vector<uint8_t> empty = serialize({});
  EXPECT_EQ(std::string(empty.begin() + 8, empty.end()), "{}      ");
}

TEST(SafetensorsRoundTrip, TensorsAreOrderedByAlignmentThenName) {
  const File file = reload({{"b_bool", Tensor::zeros({3}, DType::boolean)},
                            {"a_f16", Tensor::zeros({1}, DType::f16)},
                            {"z_i64", Tensor::zeros({1}, DType::i64)},
                            {"b_f32", Tensor::zeros({1})},
                            {"a_f32", Tensor::zeros({1})},
                            {"bf16", Tensor::zeros({1}, DType::bf16)},
                            {"i32", Tensor::zeros({1}, DType::i32)}});
  std::vector<std::string> order;
  for (const TensorInfo& info : file.tensors()) {
    order.push_back(info.name);
    // Each tensor lands naturally aligned, since the header is padded to 8.
    const Tensor t = file.get(info.name);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % t.itemsize(), 0u) << info.name;
  }
  EXPECT_EQ(order, (std::vector<std::string>{"z_i64", "a_f32", "b_f32", "i32", "bf16", "a_f16",
                                             "b_bool"}));
}

TEST(SafetensorsRoundTrip, WriterRejectsWhatAFileCannotHold) {
  EXPECT_THROW(serialize({{"u", Tensor()}}), Error);
  EXPECT_THROW(serialize({{"__metadata__", Tensor::ones({1})}}), Error);
  EXPECT_THROW(serialize({{"bad\xff", Tensor::ones({1})}}), Error);
  EXPECT_THROW(serialize({}, {{"k", "\xc0\x80"}}), Error);
}

TEST_F(SafetensorsFiles, SaveOpenGivesZeroCopyViewsThatOutliveTheFile) {
  const fs::path path = dir_ / "model.safetensors";
  const Tensor w = sample({16, 8}, DType::bf16, 3);
  const Tensor ids = sample({5}, DType::i64, 4);
  save(path.string(), {{"w", w}, {"ids", ids}}, {{"step", "10"}});
  EXPECT_EQ(listing(), std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(read_file(path), serialize({{"w", w}, {"ids", ids}}, {{"step", "10"}}));

  Tensor view;
  {
    const File file = File::open(path.string());
    EXPECT_EQ(file.metadata().at("step"), "10");
    view = file.get("w");
    // Two gets of one tensor point at the same bytes of the mapping: no copy.
    EXPECT_EQ(file.get("w").raw_data(), view.raw_data());
  }
  EXPECT_EQ(bytes_of(view), bytes_of(w));  // the mapping outlives the File
  // Writes to a view stay in this process (MAP_PRIVATE): the file is unchanged.
  view.copy_(Tensor::zeros({16, 8}, DType::bf16));
  EXPECT_EQ(view.to_values(), std::vector<double>(128, 0.0));
  EXPECT_EQ(bytes_of(load(path.string()).at("w")), bytes_of(w));
  EXPECT_EQ(load(path.string()).at("ids").to_values(), ids.to_values());
}

TEST(SafetensorsGet, UnsupportedDTypeAndUnknownNameAreClearErrors) {
  // I8 and U8 are valid safetensors dtypes that qkv has no tensor type for.
  const std::string header = R"({"d":{"dtype":"I8","shape":[16],"data_offsets":[0,16]},)"
                             R"("u":{"dtype":"U8","shape":[3],"data_offsets":[16,19]}})";
  const std::vector<uint8_t> bytes = image(header, 19);
  const File file = File::from_bytes(bytes.data(), bytes.size());
  EXPECT_EQ(file.info("d").dtype, "I8");
  EXPECT_EQ(file.info("u").shape, Shape{3});
  for (const char* name : {"d", "u"}) {
    try {
      file.get(name);
      ADD_FAILURE() << "get of an unsupported dtype succeeded";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("not supported by qkv"), std::string::npos) << e.what();
    }
  }
  try {
    file.get("missing");
    ADD_FAILURE() << "get of a missing name succeeded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no tensor named 'missing' (the file has 2 tensors)"),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(file.contains("missing"));
  EXPECT_TRUE(file.contains("d"));
}

// ---- rejection: one hand-built image per rule ----------------------------------------

void expect_rejected(const std::vector<uint8_t>& bytes, const std::string& rule) {
  try {
    File::from_bytes(bytes.data(), bytes.size());
    ADD_FAILURE() << "accepted an image that breaks the rule: " << rule;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(rule), std::string::npos)
        << "message: " << e.what() << "\nexpected it to contain: " << rule;
  }
}

TEST(SafetensorsReject, FileShorterThan8Bytes) {
  for (size_t size = 0; size < 8; ++size) {
    const std::vector<uint8_t> bytes(size, 0);
    expect_rejected(bytes, "shorter than the 8-byte header length");
    expect_rejected(bytes, std::to_string(size) + " bytes long");
  }
}

TEST(SafetensorsReject, HeaderLengthAboveTheLimit) {
  expect_rejected(image("{}", 0, kMaxHeaderBytes + 1), "header length 100000001 exceeds the limit");
  expect_rejected(image("{}", 0, ~uint64_t{0}), "header length 18446744073709551615 exceeds");
}

TEST(SafetensorsReject, HeaderLengthBeyondTheFile) {
  expect_rejected(image("{}  ", 0, 5),
                  "header length 5 needs 8 + 5 bytes but the file has only 12");
  expect_rejected(image("{}", 0, kMaxHeaderBytes), "needs 8 + 100000000 bytes");
}

TEST(SafetensorsReject, HeaderNotUtf8) {
  expect_rejected(image("{\"\xff\":1}"), "header is not valid UTF-8: byte 0xff at header offset 2");
  expect_rejected(image("{\"\xc0\x80\":1}"), "not valid UTF-8");          // overlong NUL
  expect_rejected(image("{\"\xed\xa0\x80\":1}"), "not valid UTF-8");      // surrogate
  expect_rejected(image("{\"\xf4\x90\x80\x80\":1}"), "not valid UTF-8");  // past U+10FFFF
  expect_rejected(image("{\"\xe2\x82"), "not valid UTF-8");               // cut short
}

TEST(SafetensorsReject, HeaderNotStartingWithBrace) {
  expect_rejected(image(" {}"), "header does not start with '{' (first byte 0x20)");
  expect_rejected(image("[{}]"), "does not start with '{'");
  expect_rejected(image(""), "does not start with '{' (it is empty)");
}

TEST(SafetensorsReject, HeaderNotValidJsonObject) {
  expect_rejected(image("{\"a\":"), "header is not valid JSON");
  expect_rejected(image("{} x"), "header is not valid JSON");
  expect_rejected(image(std::string_view("{}\0\0", 4)), "header is not valid JSON");
  expect_rejected(image("{'a':1}"), "header is not valid JSON");
}

TEST(SafetensorsReject, DuplicateTensorNames) {
  const std::string a = entry("a", "F32", "[1]", 0, 4);
  expect_rejected(image("{" + a + "," + a + "}", 4), "duplicate tensor name 'a'");
  expect_rejected(
      image("{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("a", "F32", "[1]", 4, 8) + "}", 8),
      "duplicate tensor name 'a' in the header");
  expect_rejected(image(R"({"__metadata__":{"k":"1","k":"2"}})"), "duplicate key 'k'");
  expect_rejected(
      image(R"({"a":{"dtype":"F32","dtype":"F32","shape":[],"data_offsets":[0,4]}})", 4),
      "duplicate key 'dtype'");
}

TEST(SafetensorsReject, MetadataNotStringToString) {
  expect_rejected(image(R"({"__metadata__":["a"]})"),
                  "__metadata__ must be an object of string -> string, got array");
  expect_rejected(image(R"({"__metadata__":{"step":10}})"),
                  "__metadata__ must be an object of string -> string, but 'step' maps to number");
  expect_rejected(image(R"({"__metadata__":{"k":{"nested":"x"}}})"), "'k' maps to object");
  expect_rejected(image(R"({"__metadata__":"x"})"), "got string");
}

TEST(SafetensorsReject, TensorEntryStructure) {
  const std::string exact =
      "entry must be an object with exactly the keys dtype, shape, data_offsets";
  expect_rejected(image(R"({"a":[1,2]})"), "tensor 'a': " + exact);
  expect_rejected(image(R"({"a":{"dtype":"F32","shape":[]}})"), exact);
  expect_rejected(image(R"({"a":{"dtype":"F32","shape":[],"data_offsets":[0,4],"x":1}})", 4),
                  exact);
  expect_rejected(image(R"({"a":{"dtype":"F32","shape":[],"offsets":[0,4]}})", 4), exact);
  expect_rejected(image(R"({"a":{"dtype":5,"shape":[],"data_offsets":[0,4]}})", 4),
                  "tensor 'a': dtype must be a string, got 5");
  const std::string shape = "shape must be an array of non-negative integers";
  for (const char* bad :
       {"[-1]", "[-0]", "[1.0]", "[1e0]", "[2,\"3\"]", "3", "null", "[18446744073709551616]"}) {
    expect_rejected(
        image(std::string(R"({"a":{"dtype":"F32","shape":)") + bad + R"(,"data_offsets":[0,4]}})",
              4),
        shape);
  }
  expect_rejected(
      image(R"({"a":{"dtype":"F32","shape":[0,9223372036854775808],"data_offsets":[0,0]}})"),
      "has a size above 2^63 - 1");
  const std::string offsets = "data_offsets must be an array of two non-negative integers";
  for (const char* bad : {"[0]", "[0,4,8]", "[-4,0]", "[-0,4]", "[0,4.0]", "{}", "[0,null]"}) {
    expect_rejected(
        image(std::string(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":)") + bad + "}}", 4),
        offsets);
  }
  expect_rejected(image("{" + entry("a", "F32", "[0]", 4, 0) + "}", 4),
                  "data_offsets [4, 0] begin after they end");
}

TEST(SafetensorsReject, UnknownDType) {
  expect_rejected(image("{" + entry("a", "F128", "[1]", 0, 16) + "}", 16),
                  "tensor 'a': unknown dtype 'F128' (known: BOOL, F4,");
  expect_rejected(image("{" + entry("a", "f32", "[1]", 0, 4) + "}", 4), "unknown dtype 'f32'");
}

TEST(SafetensorsReject, ElementCountTimesDTypeSizeMustMatchTheRange) {
  expect_rejected(
      image("{" + entry("a", "F32", "[2,3]", 0, 20) + "}", 20),
      "tensor 'a': shape [2, 3] of dtype F32 needs 24 bytes but data_offsets [0, 20] span 20");
  expect_rejected(image("{" + entry("a", "BF16", "[]", 0, 4) + "}", 4), "needs 2 bytes");
  expect_rejected(image("{" + entry("a", "U8", "[4294967296,4294967296,0]", 0, 0) + "}"),
                  "the element count of shape [4294967296, 4294967296, 0] overflows 64 bits");
  expect_rejected(image("{" + entry("a", "F64", "[2305843009213693952]", 0, 0) + "}"),
                  "the byte size of shape [2305843009213693952] of dtype F64 overflows 64 bits");
  expect_rejected(image("{" + entry("a", "F4", "[3]", 0, 1) + "}", 1),
                  "3 elements of dtype F4 take 12 bits, not a whole number of bytes");
  // Sub-byte dtypes are fine in whole bytes: 4 x F6 = 24 bits = 3 bytes.
  const std::vector<uint8_t> f6 = image("{" + entry("a", "F6_E2M3", "[4]", 0, 3) + "}", 3);
  EXPECT_EQ(File::from_bytes(f6.data(), f6.size()).info("a").end, 3u);
}

TEST(SafetensorsReject, RangesMustBeContiguousFromZero) {
  const std::string rule = "(data ranges must be contiguous: no holes, no overlaps)";
  expect_rejected(image("{" + entry("a", "F32", "[1]", 4, 8) + "}", 8),
                  "tensor 'a' data_offsets [4, 8] begin at 4 but the first tensor must begin at 0");
  expect_rejected(
      image("{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("b", "F32", "[1]", 8, 12) + "}", 12),
      "the previous tensor 'a' ends at 4 " + rule);
  expect_rejected(
      image("{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[2]", 4, 12) + "}", 12),
      "tensor 'b' data_offsets [4, 12] begin at 4 but the previous tensor 'a' ends at 8");
  expect_rejected(
      image("{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("b", "F32", "[1]", 0, 4) + "}", 4),
      rule);
  // Order in the header does not matter, only in the data; empty tensors may share an offset.
  const std::vector<uint8_t> ok =
      image("{" + entry("z", "F32", "[1]", 0, 4) + "," + entry("e1", "F32", "[0]", 4, 4) + "," +
                entry("e0", "I64", "[0,2]", 4, 4) + "," + entry("a", "I32", "[1]", 4, 8) + "}",
            8);
  const File file = File::from_bytes(ok.data(), ok.size());
  std::vector<std::string> order;
  for (const TensorInfo& info : file.tensors()) order.push_back(info.name);
  EXPECT_EQ(order, (std::vector<std::string>{"z", "e0", "e1", "a"}));
}

TEST(SafetensorsReject, DataMustCoverTheBufferExactly) {
  const std::string header = "{" + entry("a", "F32", "[2]", 0, 8) + "}";
  expect_rejected(image(header, 9),
                  "the tensors cover 8 bytes of data but the file has 9 bytes "
                  "after the header (trailing bytes");
  expect_rejected(image(header, 7), "(file too short");
  expect_rejected(image("{}", 1), "the tensors cover 0 bytes of data but the file has 1");
  // Whitespace after the JSON (the writer's padding) is part of the header, not the data.
  const std::vector<uint8_t> padded = image(header + "   \n\t ", 8);
  EXPECT_EQ(File::from_bytes(padded.data(), padded.size()).tensors().size(), 1u);
}

TEST(SafetensorsReject, MetadataNullMeansNone) {
  // The reference reads "__metadata__": null as no metadata (serde's Option).
  const std::vector<uint8_t> bytes = image(R"({"__metadata__":null})");
  EXPECT_TRUE(File::from_bytes(bytes.data(), bytes.size()).metadata().empty());
}

TEST(SafetensorsGet, MisalignedDataIsCopiedToAlignedStorage) {
  // A 9-byte header puts the data buffer at offset 17: F32 data off by one.
  std::string header = "{" + entry("a", "F32", "[2]", 0, 8) + "}";
  header.resize((header.size() / 8 + 1) * 8 + 1, ' ');
  std::vector<uint8_t> bytes = image(header, 0);
  const float values[2] = {1.5f, -2.25f};
  const auto* p = reinterpret_cast<const uint8_t*>(values);
  bytes.insert(bytes.end(), p, p + 8);
  const Tensor t = File::from_bytes(bytes.data(), bytes.size()).get("a");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % 4, 0u);
  EXPECT_EQ(t.to_values(), (std::vector<double>{1.5, -2.25}));
}

TEST_F(SafetensorsFiles, OpenErrorsNameTheFile) {
  const fs::path path = dir_ / "bad.safetensors";
  write_file(path, image("{}", 3));
  try {
    File::open(path.string());
    ADD_FAILURE() << "opened a file with trailing bytes";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("file '" + path.string() + "'"), std::string::npos)
        << e.what();
  }
  write_file(path, {});
  EXPECT_THROW(File::open(path.string()), Error);
  EXPECT_THROW(File::open((dir_ / "missing.safetensors").string()), Error);
  EXPECT_THROW(File::open(dir_.string()), Error);  // a directory, not a file
}

// ---- atomic saves ----------------------------------------------------------------------

TEST_F(SafetensorsFiles, FailedSaveIntoMissingDirectoryCreatesNothing) {
  const fs::path path = dir_ / "no_such_dir" / "x.safetensors";
  try {
    save(path.string(), {{"w", Tensor::ones({2})}});
    ADD_FAILURE() << "saved into a missing directory";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot create"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
  }
  EXPECT_TRUE(listing().empty());
}

TEST_F(SafetensorsFiles, FailedSaveLeavesTheOldFileAndNoTempFile) {
  const fs::path path = dir_ / "model.safetensors";
  const Tensor old_w = sample({4}, DType::f32, 1);
  save(path.string(), {{"w", old_w}});
  const std::vector<uint8_t> old_bytes = read_file(path);

  // A tensor the writer cannot take fails before any byte is written.
  EXPECT_THROW(save(path.string(), {{"w", Tensor::ones({4})}, {"undefined", Tensor()}}), Error);
  EXPECT_EQ(read_file(path), old_bytes);
  EXPECT_EQ(listing(), std::vector<std::string>{"model.safetensors"});

  // A producer that throws midway: the half-written temporary file goes away.
  EXPECT_THROW(io::write_file_atomically(path.string(),
                                         [](io::FileSink& sink) {
                                           sink.write("partial", 7);
                                           throw Error("producer failed");
                                         }),
               Error);
  EXPECT_EQ(read_file(path), old_bytes);
  EXPECT_EQ(listing(), std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(load(path.string()).at("w").to_values(), old_w.to_values());
}

TEST_F(SafetensorsFiles, WriteErrorFromTheDiskLeavesTheOldFile) {
  const fs::path path = dir_ / "model.safetensors";
  save(path.string(), {{"w", Tensor::ones({4})}});
  const std::vector<uint8_t> old_bytes = read_file(path);

  // A file size limit makes write() fail with EFBIG, as a full disk would with ENOSPC.
  rlimit old_limit{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  const auto old_handler = signal(SIGXFSZ, SIG_IGN);
  rlimit limit = old_limit;
  limit.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
  std::string message;
  try {
    save(path.string(), {{"big", Tensor::ones({64 * 1024})}});
  } catch (const Error& e) {
    message = e.what();
  }
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old_limit), 0);
  signal(SIGXFSZ, old_handler);

  EXPECT_NE(message.find("failed"), std::string::npos) << message;
  EXPECT_EQ(read_file(path), old_bytes);
  EXPECT_EQ(listing(), std::vector<std::string>{"model.safetensors"});
}

TEST_F(SafetensorsFiles, SaveOverAMappedFileKeepsOldViewsIntact) {
  const fs::path path = dir_ / "model.safetensors";
  const Tensor first = sample({32}, DType::f32, 11);
  save(path.string(), {{"w", first}});
  const Tensor view = File::open(path.string()).get("w");
  save(path.string(), {{"w", Tensor::zeros({32})}});  // rename: the old inode lives on
  EXPECT_EQ(view.to_values(), first.to_values());
  EXPECT_EQ(load(path.string()).at("w").to_values(), std::vector<double>(32, 0.0));
}

// ---- interop with the reference Python package --------------------------------------

std::vector<uint8_t> from_hex(const std::string& hex) {
  std::vector<uint8_t> out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i)
    out[i] = static_cast<uint8_t>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  return out;
}

std::optional<DType> qkv_dtype_of(const std::string& name) {
  static const std::map<std::string, DType> kNames = {
      {"F32", DType::f32}, {"BF16", DType::bf16}, {"F16", DType::f16},
      {"I32", DType::i32}, {"I64", DType::i64},   {"BOOL", DType::boolean}, {"F64", DType::f64}};
  const auto it = kNames.find(name);
  return it == kNames.end() ? std::nullopt : std::optional<DType>(it->second);
}

TEST(SafetensorsInterop, PythonFixturesLoadBitExactlyAndSerializeByteIdentically) {
  const fs::path dir = fs::path(QKV_TEST_DATA_DIR) / "safetensors";
  std::ifstream in(dir / "expected.json");
  ASSERT_TRUE(in) << "missing " << dir / "expected.json";
  const nlohmann::json expected = nlohmann::json::parse(in);
  ASSERT_EQ(expected.size(), 7u);
  int identical = 0;
  for (const auto& [file_name, spec] : expected.items()) {
    SCOPED_TRACE(file_name);
    const File file = File::open((dir / file_name).string());
    using StringMap = std::map<std::string, std::string>;
    EXPECT_EQ(file.metadata(), spec["metadata"].get<StringMap>());
    ASSERT_EQ(file.tensors().size(), spec["tensors"].size());
    std::map<std::string, Tensor> rebuilt;
    for (const auto& [name, t] : spec["tensors"].items()) {
      SCOPED_TRACE(name);
      const TensorInfo& info = file.info(name);
      EXPECT_EQ(info.dtype, t["dtype"].get<std::string>());
      EXPECT_EQ(info.shape, t["shape"].get<Shape>());
      const std::vector<uint8_t> raw = from_hex(t["hex"].get<std::string>());
      const std::optional<DType> dtype = qkv_dtype_of(info.dtype);
      if (!dtype) {
        EXPECT_THROW(file.get(name), Error);
        continue;
      }
      const Tensor loaded = file.get(name);
      EXPECT_EQ(loaded.dtype(), *dtype);
      EXPECT_EQ(bytes_of(loaded), raw);
      Tensor copy = Tensor::empty(info.shape, *dtype);
      if (!raw.empty()) std::memcpy(copy.raw_data(), raw.data(), raw.size());
      rebuilt[name] = copy;
    }
    const std::vector<uint8_t> ours = serialize(rebuilt, file.metadata());
    if (spec["byte_identical"].get<bool>()) {
      EXPECT_EQ(ours, read_file(dir / file_name));
      ++identical;
    } else if (rebuilt.size() == file.tensors().size()) {
      // Same content, metadata keys in another order: same length, same meaning.
      EXPECT_EQ(ours.size(), read_file(dir / file_name).size());
      const File again = File::from_bytes(ours.data(), ours.size());
      EXPECT_EQ(again.metadata(), file.metadata());
      for (const auto& [name, t] : rebuilt) EXPECT_EQ(bytes_of(again.get(name)), bytes_of(t));
    }
  }
  EXPECT_EQ(identical, 5);
}

}  // namespace
}  // namespace qkv::safetensors
