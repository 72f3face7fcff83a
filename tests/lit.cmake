# lit set-up (see tests/CMakeLists.txt)
