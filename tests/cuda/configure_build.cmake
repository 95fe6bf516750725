# Drives packaging.cuda_configure_build: configure ghnq with -DGHNQ_WITH_CUDA=ON in ${WORK}, build only
# ghnq_cuda_tests and ghnq_header_check (which then covers the cuda/ headers), run ghnq_cuda_tests
# (its device tests skip without a GPU). ${WORK} is kept between runs, so reruns are incremental.
# Prints "GHNQ_SKIP: ..." (the test's SKIP_REGULAR_EXPRESSION) when no CUDA toolkit is present.
if(NOT NVCC OR NOT EXISTS "${NVCC}")
  message("GHNQ_SKIP: no CUDA toolkit (nvcc not found; looked in CUDAToolkit_ROOT, CUDA_PATH, /usr/local/cuda)")
  return()
endif()
get_filename_component(cuda_root "${NVCC}" DIRECTORY)
get_filename_component(cuda_root "${cuda_root}" DIRECTORY)
cmake_host_system_information(RESULT jobs QUERY NUMBER_OF_LOGICAL_CORES)
function(run what)
  string(TIMESTAMP t0 "%s")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  string(TIMESTAMP t1 "%s")
  math(EXPR dt "${t1} - ${t0}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message(STATUS "${what}: ok in ${dt} s")
  set(last_output "${out}\n${err}" PARENT_SCOPE)
endfunction()
set(compiler)
if(CXX)
  set(compiler -DCMAKE_CXX_COMPILER=${CXX})
endif()
run("configure (CUDA toolkit ${cuda_root})"
    ${CMAKE_COMMAND} -G ${GENERATOR} -S ${GHNQ_SOURCE} -B ${WORK} ${compiler} -DCMAKE_BUILD_TYPE=Release
    -DGHNQ_WITH_CUDA=ON -DCUDAToolkit_ROOT=${cuda_root} -DGHNQ_BUILD_TESTS=ON -DGHNQ_BUILD_EXAMPLES=OFF
    -DGHNQ_BUILD_BENCHMARKS=OFF)
run("build ghnq_cuda_tests ghnq_header_check"
    ${CMAKE_COMMAND} --build ${WORK} --target ghnq_cuda_tests ghnq_header_check -j ${jobs})
# Warnings located in ghnq's headers or the CUDA test fail the check (Eigen's own are not ours).
if(last_output MATCHES "(include/ghnq|tests/cuda)/[^:\n]*:[0-9]+:[0-9]+: warning:")
  message(FATAL_ERROR "ghnq's headers produced warnings in the CUDA build:\n${last_output}")
endif()
run("run ghnq_cuda_tests" ${WORK}/tests/ghnq_cuda_tests)
message(STATUS "${last_output}")
