# Finds the nats.c client and provides the target cnats::nats.
#
# Debian's libnats-dev ships a cnats CMake config that also imports
# libnats_static.a, which the package does not contain, so
# find_package(cnats) fails to configure there. Use the shared library
# directly (located through pkg-config when available).
if(TARGET cnats::nats)
  set(NatsC_FOUND TRUE)
  return()
endif()

find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(PC_LIBNATS QUIET libnats)
endif()
find_path(NatsC_INCLUDE_DIR nats/nats.h HINTS ${PC_LIBNATS_INCLUDE_DIRS})
find_library(NatsC_LIBRARY NAMES nats HINTS ${PC_LIBNATS_LIBRARY_DIRS})

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(NatsC REQUIRED_VARS NatsC_LIBRARY NatsC_INCLUDE_DIR VERSION_VAR PC_LIBNATS_VERSION)

if(NatsC_FOUND)
  add_library(cnats::nats UNKNOWN IMPORTED)
  set_target_properties(cnats::nats PROPERTIES IMPORTED_LOCATION "${NatsC_LIBRARY}"
                                               INTERFACE_INCLUDE_DIRECTORIES "${NatsC_INCLUDE_DIR}")
endif()
mark_as_advanced(NatsC_INCLUDE_DIR NatsC_LIBRARY)
