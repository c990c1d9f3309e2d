// Line files, plain or zstd-compressed: the one place that reads and writes
// zstd. Datasets and record files named "*.zst" are zstd; anything else is
// plain text. Record files (p<N>.jsonl.zst) are a sequence of complete zstd
// frames, each appended with one write(2) and holding whole lines, so the
// file is always a valid .zst (`zstd -dc` reads it) up to a torn last frame.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "common/base/status.h"

struct ZSTD_CCtx_s;
struct ZSTD_DCtx_s;

namespace matrix {

// Whether `path` names a zstd file (ends with ".zst").
bool IsZstdPath(const std::string& path);

// Reads the lines of a plain or (by its name) zstd-compressed file, frame
// after frame. Lines are returned without their newline.
class LineReader {
 public:
  static StatusOr<std::unique_ptr<LineReader>> Open(const std::string& path);
  ~LineReader();
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // False at the end of the input; sets *error (non-empty) when the
  // compressed stream is corrupt.
  bool Next(std::string* line, std::string* error);
  // Whether the last line returned ended with a newline (false for the
  // unfinished last line of a file being written).
  bool last_line_complete() const { return last_complete_; }

 private:
  explicit LineReader(FILE* f) : file_(f) {}
  bool Fill(std::string* error);

  FILE* file_;
  ZSTD_DCtx_s* zstd_ = nullptr;
  std::string zin_;
  size_t zin_pos_ = 0;
  std::string buf_;
  size_t pos_ = 0;
  bool last_complete_ = true;
};

// Compresses each call's data into one complete zstd frame (with a content
// checksum). One per writer: the context is reused between frames.
class ZstdFrameWriter {
 public:
  explicit ZstdFrameWriter(int level = 3);
  ~ZstdFrameWriter();
  ZstdFrameWriter(const ZstdFrameWriter&) = delete;
  ZstdFrameWriter& operator=(const ZstdFrameWriter&) = delete;

  // Replaces *frame with the frame holding `data`.
  Status Compress(std::string_view data, std::string* frame);

 private:
  ZSTD_CCtx_s* cctx_;
  std::string scratch_;
};

// Walks a buffer of concatenated zstd frames (a record file read whole),
// calling `on_frame` with each whole frame's content and the offset just
// past the frame; stops at the first error `on_frame` returns.
// *whole_bytes: the bytes of whole frames. What follows them is a torn last
// frame (a frame cut short, or the zero bytes a power cut can leave), which
// the caller may truncate. DataLoss for bytes that are not a zstd frame or a
// frame that does not decode; its message says why, the caller says where
// (the frame starts at *whole_bytes).
Status ForEachZstdFrame(std::string_view data,
                        const std::function<Status(std::string_view content, size_t end)>& on_frame,
                        size_t* whole_bytes);

// The whole content of a plain or zstd file, decompressed (a torn last
// frame is left out).
StatusOr<std::string> ReadLinesFile(const std::string& path);

}  // namespace matrix
