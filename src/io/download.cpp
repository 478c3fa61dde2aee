#include "batchcam/io/download.h"

#include "batchcam/io/sha256.h"

#ifdef BATCHCAM_WITH_DOWNLOAD
#include <curl/curl.h>
#endif
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <stdexcept>

namespace batchcam::io {

namespace fs = std::filesystem;

namespace {
[[noreturn]] void fail(const std::string& what, const std::string& problem) {
  throw std::runtime_error(what + ": " + problem);
}

#ifdef BATCHCAM_WITH_DOWNLOAD
struct DownloadSink {
  std::FILE* file;
  int64_t written = 0;
  int64_t limit = 0;  ///< 0 = none
  bool over = false;
};

size_t write_to_file(char* data, size_t size, size_t count, void* sink_ptr) {
  auto* sink = static_cast<DownloadSink*>(sink_ptr);
  const auto bytes = static_cast<int64_t>(size * count);
  if (sink->limit > 0 && sink->written + bytes > sink->limit) {
    sink->over = true;
    return 0;  // libcurl stops the transfer
  }
  sink->written += bytes;
  return std::fwrite(data, size, count, sink->file) * size;
}

// Downloads url to path, at most `limit` bytes (0 = no limit); returns "" on success or the reason.
std::string download(const std::string& url, const std::string& path, int64_t limit) {
  static std::once_flag init;
  std::call_once(init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (!file) return "cannot write " + path;
  CURL* curl = curl_easy_init();
  if (!curl) {
    std::fclose(file);
    return "libcurl could not start";
  }
  char error[CURL_ERROR_SIZE] = "";
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, write_to_file);
  DownloadSink sink{file, 0, limit};
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &sink);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(curl, CURLOPT_FAILONERROR, 1L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 20L);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1024L);  // abort below 1 KiB/s ...
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, 30L);     // ... for 30 s
  const CURLcode rc = curl_easy_perform(curl);
  curl_easy_cleanup(curl);
  const bool closed = std::fclose(file) == 0;
  if (sink.over) return "more data than the expected " + std::to_string(limit) + " bytes (download stopped)";
  if (rc != CURLE_OK) return error[0] ? error : curl_easy_strerror(rc);
  if (!closed) return "cannot write " + path;
  return "";
}
#endif

}  // namespace

// The file as present in dir: `name`, or `name` without ".gz" (uncompressed); "" if neither.
std::string present_file(const std::string& dir, const std::string& name) {
  const auto gz = fs::path(dir) / name;
  if (fs::is_regular_file(gz)) return gz.string();
  const auto raw = fs::path(dir) / name.substr(0, name.size() - 3);
  if (name.size() > 3 && fs::is_regular_file(raw)) return raw.string();
  return "";
}

void ensure_files(const std::string& dir, const std::vector<DataFile>& files, std::vector<std::string> mirrors) {
  if (const char* mirror = std::getenv("BATCHCAM_DATA_MIRROR"); mirror && *mirror) mirrors = {mirror};
  std::vector<const DataFile*> missing;
  for (const auto& f : files) {
    if (present_file(dir, f.name).empty()) missing.push_back(&f);
  }
  if (missing.empty()) return;
  std::string names;
  for (const auto* f : missing) names += (names.empty() ? "" : ", ") + f->name;
#ifndef BATCHCAM_WITH_DOWNLOAD
  fail(dir, "missing " + names + ", and this batchcam was built without downloading (BATCHCAM_WITH_DOWNLOAD=OFF)" +
                ". Put the files in this directory by hand (or choose another with --data-dir)");
#else
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail(dir, "missing " + names + " and cannot create the directory to download them (" + ec.message() + ")");
  for (const auto* f : missing) {
    const auto target = (fs::path(dir) / f->name).string();
    const auto tmp = target + ".tmp." + std::to_string(::getpid());
    std::string reasons;
    bool done = false;
    for (auto base : mirrors) {
      if (!base.empty() && base.back() != '/') base += '/';
      const std::string error = download(base + f->name, tmp, f->size);
      if (error.empty()) {
        const auto sum = sha256_file(tmp);
        if (sum == f->sha256) {
          fs::rename(tmp, target);
          done = true;
          break;
        }
        reasons += "; " + base + f->name + ": SHA-256 " + sum + " is not the published " + f->sha256;
      } else {
        reasons += "; " + base + f->name + ": " + error;
      }
      std::remove(tmp.c_str());
    }
    if (!done) {
      fail(dir, "missing " + names + " and the download failed" + reasons +
                    ". Put the files in this directory by hand (or choose another with --data-dir)");
    }
  }
#endif
}

}  // namespace batchcam::io
