#include "common/base/zstd_lines.h"

#include <zstd.h>
#include <zstd_errors.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include "common/base/files.h"

namespace matrix {

namespace {
// The first bytes of every zstd frame (ZSTD_MAGICNUMBER, little-endian).
constexpr unsigned char kMagic[4] = {0x28, 0xB5, 0x2F, 0xFD};

// Whether `rest` (what follows the last whole frame) is a frame cut short or
// zero bytes: what a crash or a power cut leaves at the end of a file that
// is only ever appended to.
bool IsTornTail(std::string_view rest, size_t find_result) {
  if (rest.find_first_not_of('\0') == std::string_view::npos) return true;
  const size_t n = std::min<size_t>(rest.size(), 4);
  if (std::memcmp(rest.data(), kMagic, n) != 0) return false;
  return n < 4 || ZSTD_getErrorCode(find_result) == ZSTD_error_srcSize_wrong;
}
}  // namespace

bool IsZstdPath(const std::string& path) {
  return path.size() > 4 && path.compare(path.size() - 4, 4, ".zst") == 0;
}

StatusOr<std::unique_ptr<LineReader>> LineReader::Open(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return NotFound("cannot open " + path + ": " + std::strerror(errno));
  auto r = std::unique_ptr<LineReader>(new LineReader(f));
  if (IsZstdPath(path)) r->zstd_ = ZSTD_createDCtx();
  return r;
}

LineReader::~LineReader() {
  if (zstd_) ZSTD_freeDCtx(zstd_);
  std::fclose(file_);
}

bool LineReader::Next(std::string* line, std::string* error) {
  while (true) {
    size_t nl = buf_.find('\n', pos_);
    if (nl != std::string::npos) {
      line->assign(buf_, pos_, nl - pos_);
      pos_ = nl + 1;
      last_complete_ = true;
      return true;
    }
    buf_.erase(0, pos_);
    pos_ = 0;
    if (!Fill(error)) {
      if (buf_.empty()) return false;
      *line = std::move(buf_);
      buf_.clear();
      last_complete_ = false;
      return true;
    }
  }
}

bool LineReader::Fill(std::string* error) {
  char in[1 << 16];
  if (!zstd_) {
    size_t n = std::fread(in, 1, sizeof(in), file_);
    if (n == 0) return false;
    buf_.append(in, n);
    return true;
  }
  while (true) {
    if (zin_pos_ == zin_.size()) {
      size_t n = std::fread(in, 1, sizeof(in), file_);
      if (n == 0) return false;
      zin_.assign(in, n);
      zin_pos_ = 0;
    }
    ZSTD_inBuffer ib{zin_.data(), zin_.size(), zin_pos_};
    std::string out(1 << 17, '\0');
    ZSTD_outBuffer ob{out.data(), out.size(), 0};
    size_t rc = ZSTD_decompressStream(zstd_, &ob, &ib);
    zin_pos_ = ib.pos;
    if (ZSTD_isError(rc)) {
      *error = std::string("zstd: ") + ZSTD_getErrorName(rc);
      return false;
    }
    if (ob.pos > 0) {
      buf_.append(out.data(), ob.pos);
      return true;
    }
  }
}

ZstdFrameWriter::ZstdFrameWriter(int level) : cctx_(ZSTD_createCCtx()) {
  ZSTD_CCtx_setParameter(cctx_, ZSTD_c_compressionLevel, level);
  // A frame is checked whole on resume: a torn or damaged one is never
  // taken for records.
  ZSTD_CCtx_setParameter(cctx_, ZSTD_c_checksumFlag, 1);
}

ZstdFrameWriter::~ZstdFrameWriter() { ZSTD_freeCCtx(cctx_); }

Status ZstdFrameWriter::Compress(std::string_view data, std::string* frame) {
  // Into a reused buffer, then copied at its size: frames are kept (record
  // writes, cached store objects), and compressBound is larger than the input.
  scratch_.resize(ZSTD_compressBound(data.size()));
  const size_t n = ZSTD_compress2(cctx_, scratch_.data(), scratch_.size(), data.data(), data.size());
  frame->clear();
  if (ZSTD_isError(n)) return Internal(std::string("zstd compression: ") + ZSTD_getErrorName(n));
  frame->assign(scratch_.data(), n);
  return Status::Ok();
}

Status ForEachZstdFrame(std::string_view data,
                        const std::function<Status(std::string_view content, size_t end)>& on_frame,
                        size_t* whole_bytes) {
  *whole_bytes = 0;
  // One decoder per thread: creating one allocates and clears its window
  // buffers, which costs more than decoding a small frame.
  thread_local std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)> dctx(ZSTD_createDCtx(), ZSTD_freeDCtx);
  if (!dctx) return Internal("zstd: no decoder");
  std::string content;
  size_t pos = 0;
  while (pos < data.size()) {
    const std::string_view rest = data.substr(pos);
    const size_t size = ZSTD_findFrameCompressedSize(rest.data(), rest.size());
    if (ZSTD_isError(size)) {
      if (IsTornTail(rest, size)) break;
      return DataLoss(std::string("not a zstd frame (") + ZSTD_getErrorName(size) + ")");
    }
    ZSTD_DCtx_reset(dctx.get(), ZSTD_reset_session_only);
    // Frames written whole (ZSTD_compress2, the zstd CLI on a file) say how
    // big they decode and are decoded in one call into a buffer of that size;
    // streamed ones do not, and the buffer doubles. A declared size is only
    // believed up to kOneShotMax: the frame's header is outside data.
    constexpr unsigned long long kOneShotMax = 64ull << 20;
    const unsigned long long known = ZSTD_getFrameContentSize(rest.data(), size);
    if (known <= kOneShotMax) {
      content.resize(static_cast<size_t>(known));
      const size_t n = ZSTD_decompressDCtx(dctx.get(), content.data(), content.size(), rest.data(), size);
      if (ZSTD_isError(n)) return DataLoss(std::string("a zstd frame that does not decode (") + ZSTD_getErrorName(n) + ")");
      if (n != known) return DataLoss("a zstd frame shorter than it says");
    } else {
      content.clear();
      ZSTD_inBuffer ib{rest.data(), size, 0};
      size_t rc = 1;
      while (rc != 0) {
        const size_t have = content.size();
        content.resize(have + std::max(have, ZSTD_DStreamOutSize()));
        ZSTD_outBuffer ob{content.data() + have, content.size() - have, 0};
        rc = ZSTD_decompressStream(dctx.get(), &ob, &ib);
        content.resize(have + ob.pos);
        if (ZSTD_isError(rc)) return DataLoss(std::string("a zstd frame that does not decode (") + ZSTD_getErrorName(rc) + ")");
        if (rc != 0 && ib.pos == ib.size && ob.pos == 0)
          return DataLoss("a zstd frame that ends early");
      }
    }
    MATRIX_RETURN_IF_ERROR(on_frame(content, pos + size));
    pos += size;
    *whole_bytes = pos;
  }
  return Status::Ok();
}

StatusOr<std::string> ReadLinesFile(const std::string& path) {
  MATRIX_ASSIGN_OR_RETURN(std::string data, ReadFile(path));
  if (!IsZstdPath(path)) return data;
  std::string out;
  size_t whole = 0;
  Status st = ForEachZstdFrame(
      data,
      [&](std::string_view content, size_t) {
        out.append(content);
        return Status::Ok();
      },
      &whole);
  if (!st.ok()) return DataLoss(path + " byte " + std::to_string(whole) + ": " + st.message());
  return out;
}

}  // namespace matrix
