// A C interface to libsentencepiece, built as the module libpal_sentencepiece.so that
// sentencepiece_tokenizer.cpp loads with dlopen(RTLD_LOCAL | RTLD_DEEPBIND).
//
// Why: Debian's libsentencepiece carries (and exports) its own copy of protobuf-lite 3.14,
// while LibTorch loads the system libprotobuf 3.21. In one symbol scope, whichever comes
// first serves both: sentencepiece first crashes LibTorch's protobuf initialisers at
// start-up; libprotobuf first fails sentencepiece's version check at its first use
// ("compiled against version 3.14.0 ..."). Loaded with RTLD_DEEPBIND, sentencepiece binds
// to its own copy and LibTorch to the system one.
//
// Strings cross the interface as (pointer, length); results come back in buffers that the
// caller frees with pal_sp_free (the same libc in both).
#include <sentencepiece_processor.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

char* copy(const std::string& s, size_t* length) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (!out) return nullptr;
  std::memcpy(out, s.data(), s.size());
  out[s.size()] = '\0';
  *length = s.size();
  return out;
}

// Runs fn; on failure returns false with a malloc'ed message in *error.
template <class Fn>
bool guarded(char** error, Fn&& fn) {
  size_t n;
  try {
    sentencepiece::util::Status status = fn();
    if (status.ok()) return true;
    *error = copy(status.ToString(), &n);
  } catch (const std::exception& e) {
    *error = copy(e.what(), &n);
  } catch (...) {
    *error = copy("unknown error", &n);
  }
  return false;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) void* pal_sp_load(const char* data, size_t length, char** error) {
  auto* sp = new sentencepiece::SentencePieceProcessor();
  if (guarded(error, [&] { return sp->LoadFromSerializedProto(std::string(data, length)); })) return sp;
  delete sp;
  return nullptr;
}

__attribute__((visibility("default"))) void pal_sp_delete(void* sp) {
  delete static_cast<sentencepiece::SentencePieceProcessor*>(sp);
}

__attribute__((visibility("default"))) void pal_sp_free(void* buffer) {
  std::free(buffer);
}

// Ids of text into a malloc'ed array.
__attribute__((visibility("default"))) bool pal_sp_encode(const void* sp, const char* text, size_t length,
                                                          int** ids, size_t* count, char** error) {
  std::vector<int> out;
  if (!guarded(error, [&] {
        return static_cast<const sentencepiece::SentencePieceProcessor*>(sp)->Encode(
            std::string(text, length), &out);
      }))
    return false;
  *ids = static_cast<int*>(std::malloc(sizeof(int) * (out.empty() ? 1 : out.size())));
  std::copy(out.begin(), out.end(), *ids);
  *count = out.size();
  return true;
}

__attribute__((visibility("default"))) char* pal_sp_decode(const void* sp, const int* ids, size_t count,
                                                           size_t* length, char** error) {
  std::string text;
  if (!guarded(error, [&] {
        return static_cast<const sentencepiece::SentencePieceProcessor*>(sp)->Decode(
            std::vector<int>(ids, ids + count), &text);
      }))
    return nullptr;
  return copy(text, length);
}

// Model facts: 0 piece count, 1 bos, 2 eos, 3 unk; per id: 10 is control, 11 is unknown,
// 12 is byte, 13 is unused.
__attribute__((visibility("default"))) int pal_sp_query(const void* sp_handle, int what, int id) {
  const auto* sp = static_cast<const sentencepiece::SentencePieceProcessor*>(sp_handle);
  switch (what) {
    case 0: return sp->GetPieceSize();
    case 1: return sp->bos_id();
    case 2: return sp->eos_id();
    case 3: return sp->unk_id();
    case 10: return sp->IsControl(id);
    case 11: return sp->IsUnknown(id);
    case 12: return sp->IsByte(id);
    case 13: return sp->IsUnused(id);
    default: return -1;
  }
}

// The piece of an id (valid for the processor's lifetime).
__attribute__((visibility("default"))) const char* pal_sp_piece(const void* sp, int id, size_t* length) {
  const std::string& piece = static_cast<const sentencepiece::SentencePieceProcessor*>(sp)->IdToPiece(id);
  *length = piece.size();
  return piece.data();
}

__attribute__((visibility("default"))) int pal_sp_piece_to_id(const void* sp, const char* piece,
                                                              size_t length) {
  return static_cast<const sentencepiece::SentencePieceProcessor*>(sp)->PieceToId(std::string(piece, length));
}

}  // extern "C"
