# Fails when single_include/fwd/forward.hpp differs from a fresh generation.
execute_process(COMMAND "${CMAKE_COMMAND}" -DFWD_ROOT=${FWD_ROOT} -DOUTPUT=${FRESH}
  -P "${FWD_ROOT}/tools/amalgamate.cmake" RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "generating the single header failed")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" -E compare_files
  "${FWD_ROOT}/single_include/fwd/forward.hpp" "${FRESH}" RESULT_VARIABLE differs)
if(differs)
  message(FATAL_ERROR "single_include/fwd/forward.hpp is out of date with include/: run "
    "`cmake -P tools/amalgamate.cmake` and commit the result")
endif()
message(STATUS "single_include/fwd/forward.hpp is up to date")
