# lit + FileCheck: tests/{ir,passes,frontend,tools}/**/*.mlir|*.test, run as the ctest test "lit".
set(PARALLORA_LIT /usr/lib/llvm-16/build/utils/lit/lit.py CACHE FILEPATH "lit.py from llvm-16-tools")
set(PARALLORA_FILECHECK_DIR /usr/lib/llvm-16/bin)
configure_file(${CMAKE_CURRENT_SOURCE_DIR}/lit.site.cfg.py.in ${CMAKE_CURRENT_BINARY_DIR}/lit.site.cfg.py @ONLY)
add_test(NAME lit COMMAND python3 ${PARALLORA_LIT} -sv ${CMAKE_CURRENT_BINARY_DIR})
