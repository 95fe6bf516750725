# Drives the consumer test: stage an install (or point at the source tree), configure, build, run.
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
endfunction()
set(gen -G ${GENERATOR})
if(MODE STREQUAL "install")
  run(${CMAKE_COMMAND} ${gen} -S ${GHNQ_SOURCE} -B ${WORK}/ghnq-build -DCMAKE_BUILD_TYPE=Release
      -DGHNQ_BUILD_TESTS=OFF -DGHNQ_BUILD_EXAMPLES=OFF -DGHNQ_BUILD_BENCHMARKS=OFF
      -DCMAKE_INSTALL_PREFIX=${WORK}/prefix)
  run(${CMAKE_COMMAND} --install ${WORK}/ghnq-build)
  if(NOT EXISTS ${WORK}/prefix/include/ghnq/ghn.hpp)
    message(FATAL_ERROR "install did not stage include/ghnq/ghn.hpp")
  endif()
  run(${CMAKE_COMMAND} ${gen} -S ${GHNQ_SOURCE}/tests/consumer -B ${WORK}/consumer-build
      -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${WORK}/prefix)
else()
  run(${CMAKE_COMMAND} ${gen} -S ${GHNQ_SOURCE}/tests/consumer -B ${WORK}/consumer-build
      -DCMAKE_BUILD_TYPE=Release -DGHNQ_CONSUMER_SUBDIR=${GHNQ_SOURCE})
endif()
run(${CMAKE_COMMAND} --build ${WORK}/consumer-build)
run(${WORK}/consumer-build/consumer)
message(STATUS "consumer (${MODE}) built and ran")
