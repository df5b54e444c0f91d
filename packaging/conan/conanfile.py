# Conan 2 recipe for fwd: a header-only library whose requirements pass through to its
# consumers (their headers and their libraries). From a checkout of fwd:
#
#   conan create packaging/conan --build=missing
#
# then, in a consumer's conanfile: requires = "fwd/0.1.0"; in its CMakeLists.txt:
#   find_package(fwd CONFIG REQUIRED)
#   target_link_libraries(app PRIVATE fwd::fwd)
import os

from conan import ConanFile
from conan.tools.build import check_min_cppstd
from conan.tools.files import copy
from conan.tools.layout import basic_layout

required_conan_version = ">=2.0"


class FwdConan(ConanFile):
    name = "fwd"
    version = "0.1.0"
    description = "Write forwarding for SQLite services on LiteFS: any node can write"
    topics = ("sqlite", "litefs", "rpc", "asio", "header-only")
    package_type = "header-library"
    settings = "os", "arch", "compiler", "build_type"
    no_copy_source = True
    # fwd links Boost.Serialization: make sure it is built.
    default_options = {"boost/*:without_serialization": False}

    # The recipe lives in packaging/conan/ of fwd's source tree: the sources are that tree.
    def export_sources(self):
        root = os.path.join(self.recipe_folder, "..", "..")
        copy(self, "include/*", src=root, dst=self.export_sources_folder)
        copy(self, "LICENSE*", src=root, dst=self.export_sources_folder)

    def layout(self):
        basic_layout(self, src_folder=".")

    def requirements(self):
        # What fwd's headers include and link (see cmake/fwd-dependencies.cmake).
        deps = [
            "boost/1.83.0",  # Asio, Beast, Serialization (compiled), System
            "c-ares/1.25.0",
            "sqlite3/3.45.0",
            "fmt/10.2.1",
            "openssl/3.2.1",
        ]
        for ref in deps:
            self.requires(ref, transitive_headers=True, transitive_libs=True)

    def package_id(self):
        self.info.clear()

    def validate(self):
        check_min_cppstd(self, 20)

    def package(self):
        copy(self, "*.hpp", src=os.path.join(self.source_folder, "include"),
             dst=os.path.join(self.package_folder, "include"))
        copy(self, "*.ipp", src=os.path.join(self.source_folder, "include"),
             dst=os.path.join(self.package_folder, "include"))
        copy(self, "LICENSE*", src=self.source_folder,
             dst=os.path.join(self.package_folder, "licenses"))

    def package_info(self):
        self.cpp_info.bindirs = []
        self.cpp_info.libdirs = []
        self.cpp_info.set_property("cmake_file_name", "fwd")
        self.cpp_info.set_property("cmake_target_name", "fwd::fwd")
        self.cpp_info.set_property("pkg_config_name", "fwd")
        self.cpp_info.requires = [
            "boost::headers",
            "boost::serialization",
            "c-ares::cares",
            "sqlite3::sqlite3",
            "fmt::fmt",
            "openssl::ssl",
            "openssl::crypto",
        ]
        if self.settings.os in ("Linux", "FreeBSD"):
            self.cpp_info.system_libs = ["pthread"]
