#!/usr/bin/env python3
"""Checks the blog's Fly.io files against each other and against the service's source.

    check_fly.py <examples/http_service>

Every environment variable the service reads must be set by fly.toml, be a Fly secret or
a variable Fly or LiteFS provides, or be declared left at its default; every variable
fly.toml sets must be read; the ports and paths must agree between fly.toml, litefs.yml,
the Dockerfile and the service. Prints each problem and exits 1 if there is any.
"""
import re
import sys
import tomllib
from pathlib import Path

import yaml

# Variables a Fly machine has without fly.toml setting them.
FLY_RUNTIME = {"FLY_MACHINE_ID", "FLY_APP_NAME", "FLY_REGION", "PRIMARY_REGION", "FLY_CONSUL_URL"}

root = Path(sys.argv[1])
fly_dir = root / "fly"
source = (root / "main.cpp").read_text()
fly_text = (fly_dir / "fly.toml").read_text()
fly = tomllib.loads(fly_text)
litefs = yaml.safe_load((fly_dir / "litefs.yml").read_text())
dockerfile = (fly_dir / "Dockerfile").read_text()
problems = []


def problem(text):
    problems.append(text)


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def host_of(address):
    return address.rsplit(":", 1)[0].strip("[]")


def comment_list(label):
    """Names listed in a fly.toml comment line '# <label>: A, B (...)'."""
    m = re.search(r"^#\s*" + re.escape(label) + r":\s*(.*)$", fly_text, re.M)
    if not m:
        return set()
    # Continuation lines (comments indented further) belong to the same list.
    text = m.group(1)
    return set(re.findall(r"\b[A-Z][A-Z0-9_]{2,}\b", re.sub(r"\([^)]*\)?", "", text)))


read = set(re.findall(r'\benv\("([A-Z0-9_]+)"', source))
read |= set(re.findall(r'secret_from_env\("([A-Z0-9_]+)"\)', source))
if not read:
    problem("found no environment variable read in main.cpp (env(\"...\")): is the check stale?")
env = fly.get("env", {})
secrets = comment_list("secrets")
defaults = comment_list("left at their defaults")
if not secrets:
    problem("fly.toml does not list the secrets the service needs ('# secrets: ...')")

for name in sorted(read):
    if name not in env and name not in secrets and name not in defaults and name not in FLY_RUNTIME:
        problem(f"the service reads {name}, which fly.toml neither sets, lists as a secret, "
                f"nor leaves at its default")
for name in sorted(env):
    if name not in read:
        problem(f"fly.toml sets {name}, which the service never reads")
for name in sorted(secrets | defaults):
    if name not in read:
        problem(f"fly.toml names {name} in a comment, which the service never reads")
for name in secrets:
    if name in env:
        problem(f"{name} is a secret: set it with `fly secrets set`, not in fly.toml [env]")

# The database: inside the FUSE mount, never in LiteFS's data directory (on the volume).
fuse_dir = litefs["fuse"]["dir"].rstrip("/")
data_dir = litefs["data"]["dir"].rstrip("/")
database = env.get("BLOG_DATABASE", "")
if str(Path(database).parent) != fuse_dir:
    problem(f"BLOG_DATABASE={database} is not in LiteFS's FUSE mount {fuse_dir}")
if database.startswith(data_dir + "/"):
    problem(f"BLOG_DATABASE={database} is in LiteFS's data directory {data_dir}")
if fly.get("mounts", {}).get("destination", "").rstrip("/") != data_dir:
    problem(f"the Fly volume is mounted at {fly.get('mounts', {}).get('destination')}, "
            f"LiteFS keeps its data in {data_dir}")

# Ports: Fly's proxy -> (LiteFS's proxy, if any ->) the blog's HTTP server.
http_port = port_of(env.get("BLOG_HTTP_LISTEN", "0.0.0.0:8080"))
internal_port = fly["http_service"]["internal_port"]
if "proxy" in litefs:
    if port_of(litefs["proxy"]["addr"]) != internal_port:
        problem(f"Fly sends requests to {internal_port}, LiteFS's proxy listens on {litefs['proxy']['addr']}")
    if port_of(litefs["proxy"]["target"]) != http_port:
        problem(f"LiteFS's proxy targets {litefs['proxy']['target']}, the blog listens on {http_port}")
elif internal_port != http_port:
    problem(f"Fly sends requests to port {internal_port}, the blog listens on {http_port}")
if fly.get("metrics", {}).get("port") != http_port or fly.get("metrics", {}).get("path") != "/metrics":
    problem(f"fly.toml [metrics] {fly.get('metrics')} is not the blog's /metrics on port {http_port}")
for check in fly["http_service"].get("checks", []):
    if f'path == "{check["path"]}"' not in source:
        problem(f"the health check asks for {check['path']}, which the blog does not serve")

# LiteFS's API: the blog follows it on this machine; replicas reach the primary there.
litefs_port = port_of(litefs["http"]["addr"])
if port_of(env.get("LITEFS_HTTP", ":0")) != litefs_port:
    problem(f"LITEFS_HTTP={env.get('LITEFS_HTTP')} is not LiteFS's http.addr {litefs['http']['addr']}")
if port_of(litefs["lease"]["advertise-url"]) != litefs_port:
    problem(f"advertise-url {litefs['lease']['advertise-url']} is not on LiteFS's port {litefs_port}")
if fly.get("http_service", {}).get("internal_port") in (litefs_port, port_of(env["FWD_LISTEN"])):
    problem("Fly's public HTTP service must not reach LiteFS's API or fwd's port")

# fwd: on the private network (IPv6), members from <app>.internal (AAAA records).
if host_of(env.get("FWD_LISTEN", "")) != "::":
    problem(f"FWD_LISTEN={env.get('FWD_LISTEN')}: Fly's private network is IPv6, listen on [::]")
if env.get("FWD_MEMBERS") != f"dns:{fly['app']}.internal":
    problem(f"FWD_MEMBERS={env.get('FWD_MEMBERS')} is not dns:{fly['app']}.internal")
if port_of(env["FWD_LISTEN"]) in (http_port, litefs_port):
    problem("FWD_LISTEN's port is taken by the blog's HTTP server or LiteFS")

# LiteFS's hostname is what the blog announces: the machine id on both sides.
if litefs["lease"].get("hostname") != "${FLY_MACHINE_ID}":
    problem("litefs.yml lease.hostname is not ${FLY_MACHINE_ID}")
if not re.search(r'env\("FWD_LITEFS_HOSTNAME",\s*env\("FLY_MACHINE_ID"', source):
    problem("the blog does not take its LiteFS hostname from FLY_MACHINE_ID")

# The image: LiteFS runs the blog binary the Dockerfile builds, with this litefs.yml.
commands = [e["cmd"] for e in litefs.get("exec", [])]
binary = commands[-1].split()[0] if commands else ""
if not re.search(r"COPY --from=build \S+ " + re.escape(binary) + r"\s*$", dockerfile, re.M):
    problem(f"litefs.yml runs {binary}, which the Dockerfile does not install")
if not re.search(r"^COPY \S*litefs\.yml /etc/litefs\.yml\s*$", dockerfile, re.M):
    problem("the Dockerfile does not install litefs.yml as /etc/litefs.yml")
if not re.search(r'^ENTRYPOINT \["litefs", "mount"\]', dockerfile, re.M):
    problem("the image does not start with `litefs mount`")
if "--target fwd_blog" not in dockerfile:
    problem("the Dockerfile does not build fwd_blog")

for p in problems:
    print("fly config:", p)
print(f"checked {len(read)} variables the blog reads, {len(env)} fly.toml sets; "
      f"{len(problems)} problem(s)")
sys.exit(1 if problems else 0)
