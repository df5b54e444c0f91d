# Runs the demo as tools/demo does and checks what it printed.
#   cmake -DDEMO=<fwd_demo> [-DARGS=--verbose] -DEXPECT=<regex@@...> -DREFUSE=<regex@@...> -P run_demo.cmake
# The demo must exit 0 (its proof held), print every EXPECT regex and none of REFUSE
# (regexes separated by @@).
string(REPLACE "@@" ";" EXPECT "${EXPECT}")
string(REPLACE "@@" ";" REFUSE "${REFUSE}")
execute_process(COMMAND "${DEMO}" ${ARGS} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err
  TIMEOUT 120)
message("${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "fwd_demo ${ARGS} exited with ${rc}")
endif()
foreach(regex IN LISTS EXPECT)
  if(NOT out MATCHES "${regex}")
    message(FATAL_ERROR "fwd_demo ${ARGS} did not print ${regex}")
  endif()
endforeach()
foreach(regex IN LISTS REFUSE)
  if(out MATCHES "${regex}")
    message(FATAL_ERROR "fwd_demo ${ARGS} printed ${regex}")
  endif()
endforeach()
