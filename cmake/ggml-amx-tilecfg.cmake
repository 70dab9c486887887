# Included into llama.cpp's CMake projects (CMAKE_PROJECT_INCLUDE, set in .cargo/config.toml
# for llama-cpp-sys-2 and by benches/llama-server.sh). Where GCC's <amxtileintrin.h> gives
# ldtilecfg an 8-byte operand, force-includes ggml-amx-tilecfg.h, which gives it the 64 bytes
# the instruction reads. Without it ggml's AMX kernels die of SIGILL (docs/BUILD.md).
if(CMAKE_C_COMPILER_ID STREQUAL "GNU" AND CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
    execute_process(
        COMMAND ${CMAKE_C_COMPILER} -print-file-name=include
        OUTPUT_VARIABLE _sp_gcc_include
        OUTPUT_STRIP_TRAILING_WHITESPACE)
    set(_sp_header "${_sp_gcc_include}/amxtileintrin.h")
    if(EXISTS "${_sp_header}")
        file(READ "${_sp_header}" _sp_amx)
        string(FIND "${_sp_amx}" "(const void **)__config" _sp_bug)
        if(NOT _sp_bug EQUAL -1)
            if(NOT _SP_AMX_TILECFG_REPORTED)
                message(STATUS "state-pack: ${_sp_header} gives ldtilecfg an 8-byte operand; force-including ggml-amx-tilecfg.h")
                set(_SP_AMX_TILECFG_REPORTED ON CACHE INTERNAL "")
            endif()
            add_compile_options("SHELL:-include ${CMAKE_CURRENT_LIST_DIR}/ggml-amx-tilecfg.h")
        endif()
    endif()
endif()
