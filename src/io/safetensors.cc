// safetensors reader and writer. The format: u64 little-endian N, N bytes of
// UTF-8 JSON header, then the data buffer, with every tensor's byte range given
// in the header relative to the buffer's start.
//
// The checks follow the reference implementation (huggingface/safetensors,
// safetensors/src/tensor.rs: read_metadata, Metadata::validate) and are a
// little stricter where it is silent: duplicate keys anywhere in the header are
// rejected (serde keeps the last one), and a tensor entry must have exactly the
// keys dtype, shape and data_offsets (serde ignores extra ones).
#include "qkv/safetensors.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string_view>

#include "io/file.h"

namespace qkv::safetensors {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; a big-endian host would need byte swaps");

namespace {

using json = nlohmann::json;

struct FileDType {
  const char* name;
  uint64_t bits;  // per element; sub-byte types pack several to a byte
};

// The reference's Dtype enum, in its declaration order. The writer orders
// tensors by descending position in this list (the reference's "descending
// alignment"), so the order must be kept exactly.
constexpr std::array<FileDType, 22> kFileDTypes = {{
    {"BOOL", 8},        {"F4", 4},      {"F6_E2M3", 6}, {"F6_E3M2", 6}, {"U8", 8},
    {"I8", 8},          {"F8_E5M2", 8}, {"F8_E4M3", 8}, {"F8_E8M0", 8}, {"F8_E4M3FNUZ", 8},
    {"F8_E5M2FNUZ", 8}, {"I16", 16},    {"U16", 16},    {"F16", 16},    {"BF16", 16},
    {"I32", 32},        {"U32", 32},    {"F32", 32},    {"C64", 64},    {"F64", 64},
    {"I64", 64},        {"U64", 64},
}};

std::optional<size_t> file_dtype_index(std::string_view name) {
  for (size_t i = 0; i < kFileDTypes.size(); ++i)
    if (name == kFileDTypes[i].name) return i;
  return std::nullopt;
}

std::string known_dtypes() {
  std::string s;
  for (const FileDType& d : kFileDTypes) s += (s.empty() ? "" : ", ") + std::string(d.name);
  return s;
}

std::optional<DType> qkv_dtype(std::string_view name) {
  if (name == "F32") return DType::f32;
  if (name == "BF16") return DType::bf16;
  if (name == "F16") return DType::f16;
  if (name == "I32") return DType::i32;
  if (name == "I64") return DType::i64;
  if (name == "BOOL") return DType::boolean;
  if (name == "F64") return DType::f64;
  return std::nullopt;
}

const char* file_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "F32";
    case DType::bf16: return "BF16";
    case DType::f16: return "F16";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
    case DType::boolean: return "BOOL";
    case DType::f64: return "F64";
  }
  throw Error(detail::str("safetensors: dtype ", static_cast<int>(dtype), " has no file name"));
}

// The prefix of every reader error: which file, or which in-memory image.
std::string source_name(const std::string& path, size_t size) {
  return path.empty() ? detail::str("safetensors: in-memory image of ", size, " bytes: ")
                      : detail::str("safetensors: file '", path, "': ");
}

// The offset of the first byte that does not begin a valid UTF-8 sequence
// (overlong forms, surrogates and code points past U+10FFFF are invalid, as in
// Rust's str::from_utf8), or npos when all of `s` is valid.
size_t invalid_utf8_at(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto lead = static_cast<uint8_t>(s[i]);
    if (lead < 0x80) {
      ++i;
      continue;
    }
    size_t length;
    uint32_t code, smallest;
    if ((lead & 0xe0) == 0xc0) {
      length = 2, code = lead & 0x1fu, smallest = 0x80;
    } else if ((lead & 0xf0) == 0xe0) {
      length = 3, code = lead & 0x0fu, smallest = 0x800;
    } else if ((lead & 0xf8) == 0xf0) {
      length = 4, code = lead & 0x07u, smallest = 0x10000;
    } else {
      return i;
    }
    if (s.size() - i < length) return i;
    for (size_t k = 1; k < length; ++k) {
      const auto next = static_cast<uint8_t>(s[i + k]);
      if ((next & 0xc0) != 0x80) return i;
      code = (code << 6) | (next & 0x3fu);
    }
    if (code < smallest || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return i;
    i += length;
  }
  return std::string_view::npos;
}

// A JSON value shortened for an error message.
std::string excerpt(const json& value) {
  std::string s = value.dump(-1, ' ', false, json::error_handler_t::replace);
  return s.size() > 80 ? s.substr(0, 77) + "..." : s;
}

// nlohmann types every integer written without a minus sign as unsigned; "-0"
// is signed, and the reference (serde, usize) rejects it as the float -0.0.
std::optional<uint64_t> as_non_negative_integer(const json& value) {
  if (value.is_number_unsigned()) return value.get<uint64_t>();
  return std::nullopt;
}

// Parses the header, rejecting duplicate keys in any object: nlohmann keeps the
// last of two equal keys without a word, so they are caught as the parser
// reports them.
json parse_header(std::string_view text, const std::string& where) {
  std::vector<std::set<std::string>> keys_per_object;
  std::optional<std::string> duplicate;
  int duplicate_depth = 0;
  auto on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      keys_per_object.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      keys_per_object.pop_back();
    } else if (event == json::parse_event_t::key && !duplicate) {
      if (!keys_per_object.back().insert(parsed.get<std::string>()).second) {
        duplicate = parsed.get<std::string>();
        duplicate_depth = depth;
      }
    }
    return true;
  };
  // nlohmann's lexer takes a NUL byte for the end of input and would accept
  // anything after it; a raw NUL is never valid JSON text.
  const size_t nul = text.find('\0');
  QKV_CHECK(nul == std::string_view::npos, where,
            "header is not valid JSON: NUL byte at header offset ", nul);
  json header;
  try {
    header = json::parse(text.begin(), text.end(), on_event);
  } catch (const json::exception& e) {
    throw Error(detail::str(where, "header is not valid JSON: ", e.what()));
  }
  if (duplicate) {
    QKV_CHECK(duplicate_depth != 1, where, "duplicate tensor name '", *duplicate,
              "' in the header (names must be unique)");
    throw Error(detail::str(where, "duplicate key '", *duplicate,
                            "' in an object of the header (keys must be unique)"));
  }
  QKV_CHECK(header.is_object(), where, "header is not a JSON object but ", header.type_name());
  return header;
}

std::map<std::string, std::string> parse_metadata(const json& value, const std::string& where) {
  std::map<std::string, std::string> metadata;
  // null is the reference's Option::None: no metadata.
  if (value.is_null()) return metadata;
  QKV_CHECK(value.is_object(), where, "__metadata__ must be an object of string -> string, got ",
            value.type_name(), " ", excerpt(value));
  for (const auto& [key, item] : value.items()) {
    QKV_CHECK(item.is_string(), where, "__metadata__ must be an object of string -> string, but '",
              key, "' maps to ", item.type_name(), " ", excerpt(item));
    metadata.emplace(key, item.get<std::string>());
  }
  return metadata;
}

// One tensor entry: its structure, dtype and shape. Offsets are checked
// against each other later, in data order.
TensorInfo parse_entry(const std::string& name, const json& entry, const std::string& where) {
  const auto entry_error = [&](const auto&... what) {
    return Error(detail::str(where, "tensor '", name, "': ", what...));
  };
  const bool has_keys = entry.is_object() && entry.size() == 3 && entry.contains("dtype") &&
                        entry.contains("shape") && entry.contains("data_offsets");
  if (!has_keys)
    throw entry_error(
        "entry must be an object with exactly the keys dtype, shape, data_offsets; got ",
        excerpt(entry));
  TensorInfo info;
  info.name = name;
  const json& dtype = entry["dtype"];
  if (!dtype.is_string()) throw entry_error("dtype must be a string, got ", excerpt(dtype));
  info.dtype = dtype.get<std::string>();
  if (!file_dtype_index(info.dtype))
    throw entry_error("unknown dtype '", info.dtype, "' (known: ", known_dtypes(), ")");

  const json& shape = entry["shape"];
  if (!shape.is_array())
    throw entry_error("shape must be an array of non-negative integers, got ", excerpt(shape));
  for (const json& size : shape) {
    const std::optional<uint64_t> n = as_non_negative_integer(size);
    if (!n)
      throw entry_error("shape must be an array of non-negative integers, got ", excerpt(shape));
    // Shape holds int64; the reference's usize allows larger sizes, which
    // only a zero elsewhere in the shape could make consistent with the data.
    if (*n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      throw entry_error("shape ", excerpt(shape),
                        " has a size above 2^63 - 1, which qkv cannot hold");
    info.shape.push_back(static_cast<int64_t>(*n));
  }

  const json& offsets = entry["data_offsets"];
  std::optional<uint64_t> begin, end;
  if (offsets.is_array() && offsets.size() == 2) {
    begin = as_non_negative_integer(offsets[0]);
    end = as_non_negative_integer(offsets[1]);
  }
  if (!begin || !end)
    throw entry_error("data_offsets must be an array of two non-negative integers, got ",
                      excerpt(offsets));
  if (*begin > *end)
    throw entry_error("data_offsets [", *begin, ", ", *end, "] begin after they end");
  info.begin = *begin;
  info.end = *end;
  return info;
}

// The byte size of a tensor, or an error when it overflows 64 bits or is not
// a whole number of bytes. Multiplies in order, as the reference does, so a
// zero after an overflowing prefix still overflows.
uint64_t checked_nbytes(const TensorInfo& info, const std::string& where) {
  const uint64_t bits = kFileDTypes[*file_dtype_index(info.dtype)].bits;
  uint64_t numel = 1;
  for (int64_t size : info.shape) {
    QKV_CHECK(!__builtin_mul_overflow(numel, static_cast<uint64_t>(size), &numel), where,
              "tensor '", info.name, "': the element count of shape ", shape_string(info.shape),
              " overflows 64 bits");
  }
  uint64_t total_bits = 0;
  QKV_CHECK(!__builtin_mul_overflow(numel, bits, &total_bits), where, "tensor '", info.name,
            "': the byte size of shape ", shape_string(info.shape), " of dtype ", info.dtype,
            " overflows 64 bits");
  QKV_CHECK(total_bits % 8 == 0, where, "tensor '", info.name, "': ", numel, " elements of dtype ",
            info.dtype, " take ", total_bits, " bits, not a whole number of bytes");
  return total_bits / 8;
}

}  // namespace

// ---- reader ---------------------------------------------------------------------

File File::open(const std::string& path) {
  return parse(io::map_file(path, "safetensors"), path);
}

File File::from_bytes(const void* data, size_t size) {
  std::shared_ptr<Storage> buffer = Storage::allocate(size);
  if (size > 0) std::memcpy(buffer->data(), data, size);
  return parse(std::move(buffer), "");
}

File File::parse(std::shared_ptr<Storage> buffer, const std::string& path) {
  const auto* bytes = static_cast<const uint8_t*>(buffer->data());
  const uint64_t size = buffer->nbytes();
  const std::string where = source_name(path, size);

  QKV_CHECK(size >= 8, where, "the file is ", size,
            " bytes long, shorter than the 8-byte header length");
  uint64_t header_bytes = 0;
  std::memcpy(&header_bytes, bytes, 8);
  QKV_CHECK(header_bytes <= kMaxHeaderBytes, where, "header length ", header_bytes,
            " exceeds the limit of ", kMaxHeaderBytes, " bytes");
  QKV_CHECK(header_bytes <= size - 8, where, "header length ", header_bytes, " needs 8 + ",
            header_bytes, " bytes but the file has only ", size, " bytes");

  const std::string_view text(reinterpret_cast<const char*>(bytes + 8), header_bytes);
  const size_t bad = invalid_utf8_at(text);
  QKV_CHECK(bad == std::string_view::npos, where, "header is not valid UTF-8: byte 0x", std::hex,
            static_cast<int>(static_cast<uint8_t>(text[bad])), std::dec, " at header offset ", bad,
            " does not start a valid sequence");
  QKV_CHECK(!text.empty() && text.front() == '{', where, "header does not start with '{' (",
            text.empty() ? std::string("it is empty")
                         : detail::str("first byte 0x", std::hex,
                                       static_cast<int>(static_cast<uint8_t>(text.front()))),
            ")");
  const json header = parse_header(text, where);

  File file;
  file.path_ = path;
  file.buffer_ = std::move(buffer);
  file.data_start_ = 8 + header_bytes;
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__")
      file.metadata_ = parse_metadata(value, where);
    else
      file.tensors_.push_back(parse_entry(key, value, where));
  }

  // Data order; names break ties between empty tensors so the order is
  // deterministic.
  std::sort(file.tensors_.begin(), file.tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
            });
  uint64_t data_end = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& info : file.tensors_) {
    QKV_CHECK(info.begin == data_end, where, "tensor '", info.name, "' data_offsets [", info.begin,
              ", ", info.end, "] begin at ", info.begin, " but ",
              previous
                  ? detail::str("the previous tensor '", previous->name, "' ends at ", data_end)
                  : std::string("the first tensor must begin at 0"),
              " (data ranges must be contiguous: no holes, no overlaps)");
    const uint64_t nbytes = checked_nbytes(info, where);
    QKV_CHECK(nbytes == info.end - info.begin, where, "tensor '", info.name, "': shape ",
              shape_string(info.shape), " of dtype ", info.dtype, " needs ", nbytes,
              " bytes but data_offsets [", info.begin, ", ", info.end, "] span ",
              info.end - info.begin);
    data_end = info.end;
    previous = &info;
  }
  const uint64_t buffer_bytes = size - file.data_start_;
  QKV_CHECK(data_end == buffer_bytes, where, "the tensors cover ", data_end,
            " bytes of data but the file has ", buffer_bytes, " bytes after the header (",
            data_end < buffer_bytes ? "trailing bytes" : "file too short",
            "; the data must cover the buffer exactly)");

  for (size_t i = 0; i < file.tensors_.size(); ++i) file.index_[file.tensors_[i].name] = i;
  return file;
}

bool File::contains(const std::string& name) const {
  return index_.count(name) > 0;
}

const TensorInfo& File::info(const std::string& name) const {
  const auto it = index_.find(name);
  QKV_CHECK(it != index_.end(), source_name(path_, buffer_->nbytes()), "no tensor named '", name,
            "' (the file has ", tensors_.size(), " tensors)");
  return tensors_[it->second];
}

Tensor File::get(const std::string& name) const {
  const TensorInfo& info = this->info(name);
  const std::optional<DType> dtype = qkv_dtype(info.dtype);
  QKV_CHECK(dtype, source_name(path_, buffer_->nbytes()), "tensor '", name, "' has dtype ",
            info.dtype,
            ", which is not supported by qkv (supported: F32, F64, BF16, F16, I32, I64, BOOL)");
  auto* bytes = static_cast<uint8_t*>(buffer_->data()) + data_start_ + info.begin;
  const size_t nbytes = info.end - info.begin;
  std::shared_ptr<Storage> storage;
  if (reinterpret_cast<uintptr_t>(bytes) % dtype_size(*dtype) == 0) {
    // The view holds the whole file's buffer (the mapping) alive.
    storage = Storage::wrap(
        bytes, nbytes, [keep = buffer_]() mutable { keep.reset(); }, buffer_->device());
  } else {
    // Only hand-made files misalign data: the reference writer pads the
    // header to 8 bytes and orders tensors by descending alignment. Kernels and
    // the compiler assume naturally aligned elements, so these are copied.
    storage = Storage::allocate(nbytes);
    if (nbytes > 0) std::memcpy(storage->data(), bytes, nbytes);
  }
  return Tensor::from_storage(std::move(storage), 0, info.shape, contiguous_strides(info.shape),
                              *dtype);
}

std::map<std::string, Tensor> load(const std::string& path) {
  const File file = File::open(path);
  std::map<std::string, Tensor> tensors;
  for (const TensorInfo& info : file.tensors()) tensors.emplace(info.name, file.get(info.name));
  return tensors;
}

// ---- writer ---------------------------------------------------------------------

namespace {

// JSON string escaping exactly as serde_json writes it (the reference's
// serializer): the two-character escapes for " \ \b \f \n \r \t, \u00xx with
// lowercase hex for the other control characters, everything else verbatim.
void append_json_string(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  for (char c : s) {
    const auto u = static_cast<uint8_t>(c);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (u < 0x20) {
          out += "\\u00";
          out += kHex[u >> 4];
          out += kHex[u & 0xf];
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

void check_utf8(std::string_view s, const char* what) {
  const size_t bad = invalid_utf8_at(s);
  QKV_CHECK(bad == std::string_view::npos, "safetensors: ", what, " '", s,
            "' is not valid UTF-8 (byte ", bad, ")");
}

struct Entry {
  const std::string* name;
  Tensor tensor;
};

// What to write, in file order, after every input has been validated, so that
// a bad input fails before a byte is written.
struct Layout {
  std::string header;  // including the length prefix and padding
  std::vector<Entry> entries;
};

// The order and header the reference writer produces (tensor.rs, prepare):
// tensors by descending dtype alignment (position in kFileDTypes), then by
// name (bytewise), __metadata__ first. Metadata keys are written in name order;
// the reference writes them in HashMap order, which varies from run to run,
// so files with two or more metadata keys match it only up to that order.
Layout plan(const std::map<std::string, Tensor>& tensors,
            const std::map<std::string, std::string>& metadata) {
  Layout layout;
  for (const auto& [name, tensor] : tensors) {
    check_utf8(name, "tensor name");
    QKV_CHECK(name != "__metadata__", "safetensors: a tensor cannot be named __metadata__");
    QKV_CHECK(tensor.defined(), "safetensors: tensor '", name, "' is undefined");
    QKV_CHECK(tensor.device().type == DeviceType::cpu, "safetensors: tensor '", name, "' is on ",
              to_string(tensor.device()), "; only CPU tensors can be written");
    layout.entries.push_back({&name, tensor});
  }
  for (const auto& [key, value] : metadata) {
    check_utf8(key, "metadata key");
    check_utf8(value, "metadata value");
  }
  const auto rank = [](const Entry& e) {
    return *file_dtype_index(file_dtype_name(e.tensor.dtype()));
  };
  std::stable_sort(layout.entries.begin(), layout.entries.end(),
                   [&](const Entry& a, const Entry& b) { return rank(a) > rank(b); });

  std::string json = "{";
  if (!metadata.empty()) {
    json += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [key, value] : metadata) {
      if (!first) json += ',';
      first = false;
      append_json_string(json, key);
      json += ':';
      append_json_string(json, value);
    }
    json += '}';
  }
  uint64_t offset = 0;
  for (const Entry& e : layout.entries) {
    if (json.size() > 1) json += ',';
    append_json_string(json, *e.name);
    json += detail::str(":{\"dtype\":\"", file_dtype_name(e.tensor.dtype()), "\",\"shape\":[");
    for (int64_t d = 0; d < e.tensor.dim(); ++d)
      json += detail::str(d ? "," : "", e.tensor.size(d));
    const uint64_t nbytes = e.tensor.nbytes();
    json += detail::str("],\"data_offsets\":[", offset, ",", offset + nbytes, "]}");
    offset += nbytes;
  }
  json += '}';
  // Padding to 8 bytes keeps the data buffer, and with the alignment order
  // every tensor in it, naturally aligned in a page-aligned mapping.
  json.resize((json.size() + 7) / 8 * 8, ' ');
  QKV_CHECK(json.size() <= kMaxHeaderBytes, "safetensors: the header would be ", json.size(),
            " bytes, above the limit of ", kMaxHeaderBytes, " that readers accept");
  const uint64_t length = json.size();
  layout.header.resize(8);
  std::memcpy(layout.header.data(), &length, 8);
  layout.header += json;
  return layout;
}

template <class Sink>
void emit(const Layout& layout, Sink&& sink) {
  sink(layout.header.data(), layout.header.size());
  for (const Entry& e : layout.entries) {
    const Tensor values = e.tensor.contiguous();
    if (values.nbytes() > 0) sink(values.raw_data(), values.nbytes());
  }
}

}  // namespace

std::vector<uint8_t> serialize(const std::map<std::string, Tensor>& tensors,
                               const std::map<std::string, std::string>& metadata) {
  const Layout layout = plan(tensors, metadata);
  std::vector<uint8_t> bytes;
  emit(layout, [&](const void* data, size_t size) {
    const auto* p = static_cast<const uint8_t*>(data);
    bytes.insert(bytes.end(), p, p + size);
  });
  return bytes;
}

void save(const std::string& path, const std::map<std::string, Tensor>& tensors,
          const std::map<std::string, std::string>& metadata) {
  const Layout layout = plan(tensors, metadata);
  io::write_file_atomically(path, [&](io::FileSink& sink) {
    emit(layout, [&](const void* data, size_t size) { sink.write(data, size); });
  });
}

}  // namespace qkv::safetensors
