#!/usr/bin/env python3
"""Checks fwd's Conan recipe and vcpkg port offline (neither tool is needed).

    check_recipes.py <fwd source dir>

- packaging/conan/conanfile.py and its test_package parse as Python; the recipe is a
  header-library named fwd at fwd's version, and requires (with transitive headers and
  libraries) a package for every dependency fwd's CMake package finds
  (cmake/fwd-dependencies.cmake) and every library its headers include;
- packaging/vcpkg/fwd/vcpkg.json is valid JSON at the same version and lists the same;
  portfile.cmake and usage name fwd's CMake package and target.
Prints each problem and exits 1 if there is any.
"""
import ast
import json
import re
import sys
from pathlib import Path

root = Path(sys.argv[1])
problems = []


def problem(text):
    problems.append(text)


# What fwd's CMake package needs, read from the files it is built from.
deps_cmake = (root / "cmake" / "fwd-dependencies.cmake").read_text()
cmake_deps = set(re.findall(r"^\s*find_dependency\((\w+)", deps_cmake, re.M))
if "c-ares::cares" in deps_cmake:
    cmake_deps.add("c-ares")
components = set()
for m in re.finditer(r"find_dependency\(Boost[^)]*COMPONENTS([^)]*)\)", deps_cmake):
    components |= set(m.group(1).split())
if not {"Boost", "SQLite3", "fmt", "OpenSSL", "c-ares"} <= cmake_deps:
    problem(f"cmake/fwd-dependencies.cmake finds {sorted(cmake_deps)}: is this check stale?")
# The Boost libraries fwd's headers include (boost/archive is Boost.Serialization's).
boost_libs = set()
for header in (root / "include").rglob("*.hpp"):
    for lib in re.findall(r"#include <boost/(\w+)/", header.read_text()):
        boost_libs.add("serialization" if lib == "archive" else lib)
boost_libs |= components

version_hpp = (root / "include" / "fwd" / "version.hpp").read_text()
version = ".".join(re.search(rf"#define FWD_VERSION_{p} (\d+)", version_hpp).group(1)
                   for p in ("MAJOR", "MINOR", "PATCH"))

# CMake package name -> Conan package, vcpkg port. Threads is the system's.
conan_name = {"Boost": "boost", "SQLite3": "sqlite3", "fmt": "fmt", "OpenSSL": "openssl",
              "c-ares": "c-ares", "Threads": None}
vcpkg_name = {"SQLite3": "sqlite3", "fmt": "fmt", "OpenSSL": "openssl", "c-ares": "c-ares",
              "Threads": None}

# --- Conan ---
conan_dir = root / "packaging" / "conan"
recipe_text = (conan_dir / "conanfile.py").read_text()
recipe = ast.parse(recipe_text, "conanfile.py")
ast.parse((conan_dir / "test_package" / "conanfile.py").read_text(), "test_package/conanfile.py")
classes = [n for n in recipe.body if isinstance(n, ast.ClassDef)]
if len(classes) != 1 or "ConanFile" not in [getattr(b, "id", "") for b in classes[0].bases]:
    problem("conanfile.py does not define one ConanFile class")
attrs = {}
for node in classes[0].body if classes else []:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        try:
            attrs[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            pass
if attrs.get("name") != "fwd":
    problem(f"the recipe's name is {attrs.get('name')!r}, not 'fwd'")
if attrs.get("version") != version:
    problem(f"the recipe's version {attrs.get('version')} is not fwd's {version}")
if attrs.get("package_type") != "header-library":
    problem("the recipe is not a header-library")
refs = set()
for node in ast.walk(recipe):
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"[a-z0-9_-]+/[0-9][\w.]*", node.value):
        refs.add(node.value)
conan_requires = {r.split("/")[0] for r in refs}
if "transitive_headers=True" not in recipe_text or "transitive_libs=True" not in recipe_text:
    problem("the recipe does not pass its requirements' headers and libraries through")
for dep in sorted(cmake_deps):
    name = conan_name.get(dep, dep.lower())
    if name and name not in conan_requires:
        problem(f"fwd's CMake package needs {dep}; the recipe requires no {name}")
if "without_serialization" not in recipe_text:
    problem("the recipe does not make sure Boost.Serialization is built")
for target in ("boost::serialization", "c-ares::cares", "sqlite3::sqlite3", "fmt::fmt", "openssl::ssl"):
    if f'"{target}"' not in recipe_text:
        problem(f"the recipe's package_info does not require {target}")
if '"fwd::fwd"' not in recipe_text:
    problem("the recipe does not name the CMake target fwd::fwd")

# --- vcpkg ---
port = root / "packaging" / "vcpkg" / "fwd"
try:
    manifest = json.loads((port / "vcpkg.json").read_text())
except json.JSONDecodeError as e:
    manifest = {}
    problem(f"vcpkg.json is not valid JSON: {e}")
if manifest.get("name") != "fwd":
    problem("vcpkg.json's name is not fwd")
if manifest.get("version") != version:
    problem(f"vcpkg.json's version {manifest.get('version')} is not fwd's {version}")
ports = {d if isinstance(d, str) else d["name"] for d in manifest.get("dependencies", [])}
for dep in sorted(cmake_deps - {"Boost"}):
    name = vcpkg_name.get(dep, dep.lower())
    if name and name not in ports:
        problem(f"fwd's CMake package needs {dep}; vcpkg.json lists no {name}")
for lib in sorted(boost_libs):
    if f"boost-{lib}" not in ports:
        problem(f"fwd uses Boost.{lib}; vcpkg.json lists no boost-{lib}")
if "boost-headers" not in ports:
    problem("fwd links Boost::headers; vcpkg.json lists no boost-headers")
for host in ("vcpkg-cmake", "vcpkg-cmake-config"):
    if not any(isinstance(d, dict) and d.get("name") == host and d.get("host") for d in manifest.get("dependencies", [])):
        problem(f"vcpkg.json lacks the host dependency {host}")
portfile = (port / "portfile.cmake").read_text()
install_cmake = (root / "cmake" / "fwd-install.cmake").read_text()
m = re.search(r'set\(FWD_CMAKE_DIR "\$\{CMAKE_INSTALL_DATADIR\}/([^"]+)"', install_cmake)
config_dir = f"share/{m.group(1)}" if m else "?"
if f"CONFIG_PATH {config_dir}" not in portfile:
    problem(f"portfile.cmake does not fix up the CMake package where fwd installs it ({config_dir})")
for option in ("-DFWD_TESTS=OFF", "-DFWD_EXAMPLES=OFF"):
    if option not in portfile:
        problem(f"portfile.cmake does not pass {option}")
usage = (port / "usage").read_text()
if "find_package(fwd CONFIG REQUIRED)" not in usage or "fwd::fwd" not in usage:
    problem("usage does not show find_package(fwd CONFIG REQUIRED) and fwd::fwd")

for p in problems:
    print("packaging:", p)
print(f"checked: CMake dependencies {sorted(cmake_deps)}, Boost libraries {sorted(boost_libs)}; "
      f"Conan requires {sorted(conan_requires)}; vcpkg ports {sorted(ports)}; {len(problems)} problem(s)")
sys.exit(1 if problems else 0)
