# ONNX Runtime C/C++ headers for the custom-op library, fetched at configure time and never committed.
# No ONNX Runtime wheel ships headers; the npm package below republishes Microsoft's ONNX Runtime 1.29.0 (MIT) with
# the full header set (C API version 29, which the 1.29+ runtimes accept). The download is pinned by version and by
# npm's sha512 integrity hash, and only the verified headers are kept, in a cache shared by every build:
#   $BONSAI_EXPORT_CACHE, else $XDG_CACHE_HOME/bonsai-export, else ~/.cache/bonsai-export.
# Offline builds: -DBONSAI_ORT_NPM_TARBALL=<path to the .tgz> (checked against the same hash).
set(ort_npm_package com.github.asus4.onnxruntime)
set(ort_npm_version 0.4.9)
# = npm integrity sha512-BkzxduSZ9IkeDP6Q8lz2TFU2ie7hSSvS7ZIfzMooExoq0CNzJnuuGaUJ7IsojBgqO4ouD1jXah8OYyJbCN29Fg==
set(ort_npm_sha512
  064cf176e499f4891e0cfe90f25cf64c553689eee1492bd2ed921fccca28131a2ad02373267bae19a509ec8b288c182a3b8a2e0f58d76a1f0e63225b08ddbd16)
set(ort_headers_member "package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers")
set(BONSAI_ORT_NPM_TARBALL "" CACHE FILEPATH "Local copy of the pinned ONNX Runtime npm tarball (offline builds)")

if(DEFINED ENV{BONSAI_EXPORT_CACHE})
  set(ort_cache_root $ENV{BONSAI_EXPORT_CACHE})
elseif(DEFINED ENV{XDG_CACHE_HOME})
  set(ort_cache_root $ENV{XDG_CACHE_HOME}/bonsai-export)
else()
  set(ort_cache_root $ENV{HOME}/.cache/bonsai-export)
endif()
string(SUBSTRING ${ort_npm_sha512} 0 16 ort_hash_prefix)
set(BONSAI_ORT_INCLUDE_DIR ${ort_cache_root}/onnxruntime-headers-${ort_npm_version}-${ort_hash_prefix})
set(ort_stamp ${BONSAI_ORT_INCLUDE_DIR}/.verified-sha512)

if(EXISTS ${ort_stamp})
  file(READ ${ort_stamp} ort_stamp_hash)
endif()
if(NOT ort_stamp_hash STREQUAL ort_npm_sha512 OR NOT EXISTS ${BONSAI_ORT_INCLUDE_DIR}/onnxruntime_lite_custom_op.h)
  set(ort_work ${CMAKE_CURRENT_BINARY_DIR}/ort-npm)
  file(REMOVE_RECURSE ${ort_work})
  if(BONSAI_ORT_NPM_TARBALL)
    set(ort_tgz ${BONSAI_ORT_NPM_TARBALL})
    file(SHA512 ${ort_tgz} ort_got)
    if(NOT ort_got STREQUAL ort_npm_sha512)
      message(FATAL_ERROR "bonsai: ${ort_tgz}: sha512 ${ort_got} is not the pinned ${ort_npm_sha512}")
    endif()
  else()
    # The npm client fetches from whatever registry it is configured for; the hash check below pins the bytes.
    find_program(NPM_EXECUTABLE npm)
    if(NOT NPM_EXECUTABLE)
      message(FATAL_ERROR "bonsai: npm is needed to fetch the ONNX Runtime headers (${ort_npm_package}@"
                          "${ort_npm_version}); install Node.js/npm, pass -DBONSAI_ORT_NPM_TARBALL=<file>, or "
                          "-DBONSAI_BUILD_ORT_OPS=OFF to skip the ONNX Runtime op library.")
    endif()
    file(MAKE_DIRECTORY ${ort_work})
    message(STATUS "bonsai: fetching ONNX Runtime headers with npm pack ${ort_npm_package}@${ort_npm_version} (once)")
    execute_process(COMMAND ${NPM_EXECUTABLE} pack ${ort_npm_package}@${ort_npm_version} --silent
                    WORKING_DIRECTORY ${ort_work} RESULT_VARIABLE ort_code OUTPUT_VARIABLE ort_out ERROR_VARIABLE ort_err
                    OUTPUT_STRIP_TRAILING_WHITESPACE)
    set(ort_tgz ${ort_work}/${ort_npm_package}-${ort_npm_version}.tgz)
    if(NOT ort_code EQUAL 0 OR NOT EXISTS ${ort_tgz})
      message(FATAL_ERROR "bonsai: npm pack ${ort_npm_package}@${ort_npm_version} failed: ${ort_err}. Pass "
                          "-DBONSAI_ORT_NPM_TARBALL=<file> for an offline build, or -DBONSAI_BUILD_ORT_OPS=OFF.")
    endif()
    file(SHA512 ${ort_tgz} ort_got)
    if(NOT ort_got STREQUAL ort_npm_sha512)
      message(FATAL_ERROR "bonsai: ${ort_tgz}: sha512 ${ort_got} is not the pinned ${ort_npm_sha512}")
    endif()
  endif()
  file(ARCHIVE_EXTRACT INPUT ${ort_tgz} DESTINATION ${ort_work}/x PATTERNS "${ort_headers_member}/*")
  file(GLOB ort_headers ${ort_work}/x/${ort_headers_member}/*.h)
  if(NOT ort_headers)
    message(FATAL_ERROR "bonsai: ${ort_tgz} has no ${ort_headers_member}/*.h")
  endif()
  file(REMOVE_RECURSE ${BONSAI_ORT_INCLUDE_DIR})
  file(COPY ${ort_headers} DESTINATION ${BONSAI_ORT_INCLUDE_DIR})
  file(WRITE ${ort_stamp} ${ort_npm_sha512})
  file(REMOVE_RECURSE ${ort_work})
endif()
message(STATUS "bonsai: ONNX Runtime headers (npm ${ort_npm_package}@${ort_npm_version}) in ${BONSAI_ORT_INCLUDE_DIR}")
