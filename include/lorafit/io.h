// lorafit io: read and write the files people already have. safetensors and GGUF are memory-mapped
// and their tensors are zero-copy views (tensor::Tensor::wrap, the mapping kept alive by the
// tensors); JSON helpers give errors that name the file, the line/column or the field.
//
// Every error is a lorafit::Error whose message starts with "[safetensors]", "[gguf]" or "[json]"
// and names the file, the tensor/key/field and what was expected. Nothing reads past a mapping:
// every offset, length and count is checked against the file size first. Writers are atomic:
// they write "<path>.tmp.<pid>" in the same directory and rename it over <path> at the end.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "lorafit/tensor.h"

namespace lorafit::io {

using json = nlohmann::json;
using tensor::DType;
using tensor::Shape;
using tensor::Tensor;

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

// A read-only memory mapping of a whole file. Tensors that view it hold a shared_ptr to it.
// An empty file maps to data() == nullptr, size() == 0.
class MappedFile {
 public:
  // Throws Error("[io] <path>: cannot open: <strerror>") etc.
  static std::shared_ptr<const MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Drops the pages of [p, p + n) (clipped to the mapping, widened to whole pages) from this
  // process's memory (madvise MADV_DONTNEED). The values stay: the mapping is private, so the next
  // read faults the page in again from the file. A loader calls it once it has copied a tensor
  // out, so the resident set holds the copies and not the whole file besides. Edits made through
  // copy-on-write to those pages are lost: only for ranges nobody wrote.
  void release(const void* p, size_t n) const;

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

// Writes a file atomically: bytes go to "<path>.tmp.<pid>" in the same directory; commit()
// flushes, closes and renames it over <path>. Destroying an uncommitted writer removes the
// temporary file, so a failed write never leaves a half-written <path>.
class AtomicWriter {
 public:
  explicit AtomicWriter(const std::string& path);  // throws "[io] <path>: cannot create ..."
  ~AtomicWriter();
  AtomicWriter(const AtomicWriter&) = delete;
  AtomicWriter& operator=(const AtomicWriter&) = delete;

  void write(const void* data, size_t n);
  void write(std::string_view s) { write(s.data(), s.size()); }
  void write_zeros(size_t n);
  uint64_t written() const { return written_; }
  void commit();

 private:
  std::string path_, tmp_path_;
  void* file_ = nullptr;  // FILE*
  uint64_t written_ = 0;
  bool committed_ = false;
};

// Whole-file helpers.
std::string read_file(const std::string& path);
void write_file_atomic(const std::string& path, std::string_view bytes);
bool file_exists(const std::string& path);

// Writes a folder atomically: `fill` writes into a fresh temporary folder "<dir>.tmp.<pid>" next
// to dir, which then takes dir's place, so a reader never sees a half-written folder and a failed
// fill (an exception; the temporary folder is removed) leaves dir as it was.
//   Replace: dir's old contents go (dir is swapped out through "<dir>.old.<pid>"): run folders.
//   Merge:   each written file is renamed over its old version; other files in dir stay (an
//            adapter saved into a folder that holds other things).
// Errors: "[io] <dir>: exists and is not a folder", "[io] <path>: cannot create folder: ...".
enum class FolderWrite { Replace, Merge };
void write_folder_atomic(const std::string& dir,
                         const std::function<void(const std::string& tmp)>& fill,
                         FolderWrite mode = FolderWrite::Replace);

// ---------------------------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------------------------

// Parses a JSON file. A syntax error reads "[json] <path>: line L, column C: <what>".
json read_json_file(const std::string& path);
// Parses text; `origin` names it in errors (a file name, "adapter_config.json", ...).
json parse_json(std::string_view text, const std::string& origin);
// A YAML options file, read with yaml-cpp: mappings (nested too) become JSON objects, sequences
// arrays, and every scalar a JSON string (`key:` with nothing: ""); the caller interprets them.
// The top level must be one mapping. Errors read "[yaml] <path>: line L: <what>" (syntax, a key
// given twice, more than one document).
json read_yaml_file(const std::string& path);
json parse_yaml(std::string_view text, const std::string& origin);
// Writes JSON atomically (indent < 0: compact), with a trailing newline.
void write_json_file(const std::string& path, const json& value, int indent = 2);

// <model_dir>/config.json and <model_dir>/tokenizer_config.json as plain JSON objects; the
// model/tokenizer code interprets them. Error when the file is missing or not a JSON object.
json read_config(const std::string& model_dir);
json read_tokenizer_config(const std::string& model_dir);

// Typed getters on a JSON object. `where` names the object in errors, usually the file name
// (or "config.json: rope_scaling" for a nested object). Errors read
//   "[json] config.json: field 'hidden_size': expected integer, got string"
//   "[json] config.json: field 'hidden_size' is missing".
// The overloads with a default return it when the field is absent or null.
// Integers: a JSON number with no fractional part (3.0 counts; 3.5 does not).
// Numbers: any JSON number. Strings, bools: exactly that JSON type.
bool json_has(const json& obj, std::string_view key);  // present and not null
int64_t json_int(const json& obj, std::string_view key, std::string_view where);
int64_t json_int(const json& obj, std::string_view key, std::string_view where, int64_t dflt);
double json_number(const json& obj, std::string_view key, std::string_view where);
double json_number(const json& obj, std::string_view key, std::string_view where, double dflt);
bool json_bool(const json& obj, std::string_view key, std::string_view where);
bool json_bool(const json& obj, std::string_view key, std::string_view where, bool dflt);
std::string json_string(const json& obj, std::string_view key, std::string_view where);
std::string json_string(const json& obj, std::string_view key, std::string_view where,
                        const std::string& dflt);
// A list of strings; a single string counts as a one-element list (as PEFT's target_modules).
std::vector<std::string> json_string_list(const json& obj, std::string_view key,
                                          std::string_view where);
std::vector<int64_t> json_int_list(const json& obj, std::string_view key, std::string_view where);
// The JSON type name used in messages: "integer", "number", "string", "bool", "null", ...
const char* json_type_name(const json& v);

// ---------------------------------------------------------------------------------------------
// safetensors
// ---------------------------------------------------------------------------------------------
// Format: u64 LE header length N, N bytes of JSON header (padded with spaces to a multiple of 8
// by the writer), then the data section. Header: {"__metadata__": {str: str}, name: {"dtype":
// "F32", "shape": [...], "data_offsets": [begin, end]}, ...}, offsets relative to the data
// section.
//
// dtypes: F32, F16, BF16 and I32 are returned as stored (zero-copy). I64 is converted to an I32
// copy (an error if a value does not fit; e.g. BERT's position_ids buffer). Other dtypes of the
// safetensors spec (F64, I8, U8, I16, U16, U32, U64, BOOL, F8_E4M3, F8_E5M2) open fine and are
// listed, but get() on them throws "dtype 'F64' is not supported". A dtype string outside the
// spec makes open() throw.

struct SafetensorsEntry {
  std::string name;
  std::string dtype_name;  // as in the file: "F32", "BF16", "I64", ...
  bool supported = false;  // get() works (F32, F16, BF16, I32, I64)
  DType dtype = DType::F32;  // what get() returns (I32 for I64); meaningful when supported
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte range within the data section
};

class SafetensorsFile {
 public:
  // Maps and validates the whole header: header length vs file size, JSON syntax, every entry's
  // dtype/shape/offsets (end - begin == numel x element size, end <= data size, no overlap).
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  // Tensor names in data-offset order.
  const std::vector<std::string>& names() const { return names_; }
  bool contains(const std::string& name) const;
  // Throws "[safetensors] <file>: no tensor 'x'".
  const SafetensorsEntry& entry(const std::string& name) const;
  // Zero-copy view with the stored dtype (I64: converted I32 copy).
  Tensor get(const std::string& name) const;
  // F32 values: a view when stored F32, otherwise a converted copy.
  Tensor get_f32(const std::string& name) const;
  // The stored bytes of any dtype (U8 included), as in the file.
  std::vector<uint8_t> bytes(const std::string& name) const;
  // "__metadata__" (string to string); empty when absent.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::shared_ptr<const MappedFile>& mapping() const { return map_; }
  // MappedFile::release of the tensor's bytes (after a loader copied it out).
  void release(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<const MappedFile> map_;
  uint64_t data_start_ = 0;
  std::vector<std::string> names_;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Writes tensors in the given order (offsets increase in that order) plus metadata; dtypes F32,
// F16, BF16, I32 (block-quantized dtypes throw: safetensors has no such dtype). Header padded
// with spaces to a multiple of 8 bytes, as the Python library does. Duplicate names throw.
// Atomic (temp + rename). Loads with safetensors.torch.load_file / safe_open.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});
// The same for tensors given as bytes with any safetensors dtype name ("U8", "F32", ...):
// bytes.size() must be numel(shape) x the dtype's size.
struct SafetensorsBlob {
  std::string name, dtype;
  Shape shape;
  std::vector<uint8_t> bytes;
};
void write_safetensors_blobs(const std::string& path, const std::vector<SafetensorsBlob>& tensors,
                             const std::map<std::string, std::string>& metadata = {});

// A Hugging Face model folder's weights: "model.safetensors", or the shards listed by
// "model.safetensors.index.json" ("weight_map": name -> shard file). Also accepts a path to a
// single .safetensors file.
class SafetensorsFolder {
 public:
  static SafetensorsFolder open(const std::string& dir_or_file);
  // All tensor names, sorted.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const;
  const SafetensorsEntry& entry(const std::string& name) const;
  Tensor get(const std::string& name) const;
  Tensor get_f32(const std::string& name) const;
  std::vector<uint8_t> bytes(const std::string& name) const;
  void release(const std::string& name) const;  // SafetensorsFile::release
  // Metadata of the first shard.
  const std::map<std::string, std::string>& metadata() const;

 private:
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
};

// ---------------------------------------------------------------------------------------------
// bitsandbytes 4-bit weights in a safetensors folder (what transformers saves for a model loaded
// with BitsAndBytesConfig(load_in_4bit=True)); bitsandbytes' QuantState.as_dict(packed=True):
//   P                                  U8 [ceil(n/2), 1]  packed codes (first value high nibble)
//   P.absmax                           F32 [blocks], or U8 [blocks] when double quantized
//   P.quant_map                        F32 [16]   the NF4 / FP4 code values
//   P.nested_absmax                    F32 [ceil(blocks/256)]   (double quantization only)
//   P.nested_quant_map                 F32 [256]  the dynamic map  (double quantization only)
//   P.quant_state.bitsandbytes__nf4    U8: JSON {"quant_type", "blocksize": 64, "dtype",
//     (or __fp4)                        "shape": [out, in], "nested_blocksize": 256,
//                                       "nested_dtype", "nested_offset"}
// Only blocksize 64 / nested 256 with the standard maps are read (what bitsandbytes writes by
// default); anything else is refused naming the tensor and field.
// ---------------------------------------------------------------------------------------------
// Whether `name` (e.g. "model.layers.0.mlp.up_proj.weight") is stored in that layout.
bool is_bnb4_weight(const SafetensorsFolder& f, const std::string& name);
// Whether `name` is one of the statistics tensors of such a weight (P.absmax, P.quant_state...).
bool is_bnb4_state_name(const std::string& name);
// The weight as a DType::NF4 tensor (tensor::quant4_tensor) of the shape in its quant_state.
// `file` names the folder in messages.
Tensor read_bnb4_weight(const SafetensorsFolder& f, const std::string& name,
                        const std::string& file);
// "NF4 (bitsandbytes)", "NF4-DQ (bitsandbytes)", "FP4 (bitsandbytes)": for `lorafit info`.
std::string bnb4_type_name(const SafetensorsFolder& f, const std::string& name);
// The tensors of a DType::NF4 weight under `name` in that layout, for write_safetensors_blobs;
// dtype: the "dtype" recorded in the quant_state (the compute dtype torch restores: "float32").
std::vector<SafetensorsBlob> bnb4_blobs(const std::string& name, const Tensor& w,
                                        const std::string& dtype = "float32");

// ---------------------------------------------------------------------------------------------
// GGUF (v2 and v3 read, v3 written)
// ---------------------------------------------------------------------------------------------

// Metadata value types, numbered as in the file.
enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9,
  U64 = 10, I64 = 11, F64 = 12,
};
const char* gguf_type_name(GgufType t);  // "u8", "i32", "string", "array", ...

// One metadata value: a scalar, a string, or an array (of scalars, strings or nested arrays).
// Accessors throw Error("[gguf] value is <type>, expected <what>") when the type does not fit;
// GgufFile's getters add the file and key to that message.
class GgufValue {
 public:
  GgufValue() = default;
  // Scalars.
  static GgufValue u8(uint8_t v);
  static GgufValue i8(int8_t v);
  static GgufValue u16(uint16_t v);
  static GgufValue i16(int16_t v);
  static GgufValue u32(uint32_t v);
  static GgufValue i32(int32_t v);
  static GgufValue f32(float v);
  static GgufValue boolean(bool v);
  static GgufValue string(std::string v);
  static GgufValue u64(uint64_t v);
  static GgufValue i64(int64_t v);
  static GgufValue f64(double v);
  // Arrays. Numeric arrays of any scalar type: values converted to `elem` (must be a number or
  // bool type). Nested arrays: elements are arrays (all items must be ARRAY values).
  static GgufValue string_array(std::vector<std::string> v);
  static GgufValue int_array(GgufType elem, const std::vector<int64_t>& v);
  static GgufValue float_array(GgufType elem, const std::vector<double>& v);  // F32 or F64
  static GgufValue array_of_arrays(std::vector<GgufValue> items);

  GgufType type() const { return type_; }
  GgufType array_type() const;  // element type; throws unless type() == ARRAY
  bool is_array() const { return type_ == GgufType::ARRAY; }

  // Scalars. as_int: any integer type (a u64 above INT64_MAX throws); as_uint: any integer
  // type >= 0; as_float: F32/F64 or any integer; as_bool: BOOL only; as_string: STRING only.
  int64_t as_int() const;
  uint64_t as_uint() const;
  double as_float() const;
  bool as_bool() const;
  const std::string& as_string() const;

  // Arrays. size(): number of elements.
  size_t size() const;
  std::vector<int64_t> as_int_array() const;  // integer or bool elements
  std::vector<double> as_float_array() const;  // float or integer elements
  const std::vector<std::string>& as_string_array() const;  // STRING elements
  const std::vector<GgufValue>& as_array_array() const;  // ARRAY elements (nested)
  // Element i of any array as a scalar value (for generic printing).
  GgufValue at(size_t i) const;

  // Short human-readable form: `42`, `"llama"`, `[string x 49152: "<unk>", ...]`.
  std::string str(size_t max_items = 4) const;

  bool operator==(const GgufValue& o) const;

 private:
  friend struct GgufAccess;  // the reader/writer in gguf.cpp
  GgufType type_ = GgufType::U8;
  GgufType elem_ = GgufType::U8;  // arrays
  uint64_t bits_ = 0;  // scalars: the value's little-endian bits (double bits for F64, ...)
  std::string str_;  // STRING
  std::vector<uint8_t> raw_;  // numeric/bool arrays: elements as stored (little-endian)
  std::vector<std::string> strs_;  // string arrays
  std::vector<GgufValue> items_;  // nested arrays
  size_t count_ = 0;  // array length
};

// ggml tensor types by their file number.
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14, BF16 = 30,
};
// "F32", "Q4_K", ... or "type 41" for a number we do not know.
std::string ggml_type_name(uint32_t type);

struct GgufTensorInfo {
  std::string name;
  uint32_t ggml_type = 0;  // as in the file (see GgmlType)
  std::vector<int64_t> ne;  // as in the file: ne[0] is the contiguous dimension
  Shape shape;  // torch order: ne reversed
  uint64_t offset = 0;  // relative to the data section
  uint64_t nbytes = 0;
  // Tensor() returns a zero-copy view (and tensor_f32() works): F32, F16, BF16, Q8_0, Q4_0,
  // Q4_1, Q4_K, Q5_K, Q6_K (dtype set).
  bool has_dtype = false;
  DType dtype = DType::F32;
};

class GgufFile {
 public:
  // Maps and validates: magic, version (2 or 3), counts vs file size, every string/array length,
  // value types, tensor types, dims, offsets (aligned, inside the file, no overlap), duplicate
  // keys and tensor names, general.alignment (u32, power of two).
  static GgufFile open(const std::string& path);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // absolute file offset of the data

  // Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  bool has(const std::string& key) const;
  const GgufValue* find(const std::string& key) const;  // nullptr when absent
  // Throws "[gguf] <file>: key 'x' not found".
  const GgufValue& value(const std::string& key) const;
  // Typed getters; errors read "[gguf] <file>: key 'llama.block_count': value is string,
  // expected integer". The overloads with a default return it when the key is absent.
  int64_t get_int(const std::string& key) const;
  int64_t get_int(const std::string& key, int64_t dflt) const;
  double get_float(const std::string& key) const;
  double get_float(const std::string& key, double dflt) const;
  bool get_bool(const std::string& key) const;
  bool get_bool(const std::string& key, bool dflt) const;
  std::string get_string(const std::string& key) const;
  std::string get_string(const std::string& key, const std::string& dflt) const;
  const std::vector<std::string>& get_string_array(const std::string& key) const;
  std::vector<int64_t> get_int_array(const std::string& key) const;
  std::vector<double> get_float_array(const std::string& key) const;

  // Tensors in file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  bool has_tensor(const std::string& name) const;
  // Throws "[gguf] <file>: no tensor 'x'".
  const GgufTensorInfo& tensor_info(const std::string& name) const;
  // Zero-copy view in torch-order shape with the stored dtype. Throws for types without a DType
  // ("[gguf] <file>: tensor 'x': type Q5_0 is not supported (F32, F16, ...)").
  Tensor tensor(const std::string& name) const;
  // MappedFile::release of the tensor's bytes (after a loader copied it out).
  void release(const std::string& name) const;
  // Dequantized/converted F32 copy (a view when stored F32).
  Tensor tensor_f32(const std::string& name) const;
  const std::shared_ptr<const MappedFile>& mapping() const { return map_; }

 private:
  std::string path_;
  std::shared_ptr<const MappedFile> map_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::map<std::string, size_t> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

// Writes a GGUF v3 file: metadata in the given order, then tensor infos and data in the given
// order. Tensor shapes are torch order (written as ne reversed); dtypes F32, F16, BF16, Q8_0,
// Q4_0, Q4_1, Q4_K, Q5_K, Q6_K (the K-quants as bytes read from a GGUF; I32 and NF4 throw).
// Alignment: the u32 value of "general.alignment" if the metadata has it (must be a power of
// two), else 32; data section and every tensor padded with zeros to it. Duplicate keys or tensor names throw. Atomic (temp + rename). Loads with the
// Python gguf package (GGUFReader) and llama.cpp.
void write_gguf(const std::string& path,
                const std::vector<std::pair<std::string, GgufValue>>& metadata,
                const std::vector<std::pair<std::string, Tensor>>& tensors);

}  // namespace lorafit::io
