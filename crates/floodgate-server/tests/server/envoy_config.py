"""Checks deploy/envoy.yaml against Envoy's published schema and
deploy/envoy-floodgate.toml.

Envoy is not installed where floodgate is tested, so its configuration is
checked the way Envoy reads it first: the YAML, as JSON, must parse as an
envoy.config.bootstrap.v3.Bootstrap with every typed config resolved,
using the descriptor set the envoy-types crate ships (protobuf's
descriptor pool; unknown fields, wrong types and unknown enum values are
errors). Envoy's own validation rules (PGV) and a running Envoy are not
checked. Then every descriptor the routes' rate_limits build must be
decided by a rule of the floodgate config, in the filter's domain.

Usage: envoy_config.py DESCRIPTOR_SET ENVOY_YAML FLOODGATE_TOML
"""

import sys
import tomllib

import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

set_path, envoy_path, floodgate_path = sys.argv[1:4]

files = descriptor_pb2.FileDescriptorSet.FromString(open(set_path, "rb").read())
by_name = {f.name: f for f in files.file}
pool = descriptor_pool.DescriptorPool()
added = set()


def add(name):
    # Iterative depth-first: dependencies first.
    stack = [(name, False)]
    while stack:
        n, ready = stack.pop()
        if n in added:
            continue
        if ready:
            pool.Add(by_name[n])
            added.add(n)
            continue
        stack.append((n, True))
        stack.extend((d, False) for d in by_name[n].dependency if d not in added)


for name in by_name:
    add(name)

Bootstrap = message_factory.GetMessageClass(
    pool.FindMessageTypeByName("envoy.config.bootstrap.v3.Bootstrap")
)
config = yaml.safe_load(open(envoy_path))
bootstrap = Bootstrap()
json_format.ParseDict(config, bootstrap, descriptor_pool=pool)

# The rate limit filter and the descriptors each route sends.
hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
filters = {f["name"]: f["typed_config"] for f in hcm["http_filters"]}
ratelimit = filters["envoy.filters.http.ratelimit"]
domain = ratelimit["domain"]
cluster = ratelimit["rate_limit_service"]["grpc_service"]["envoy_grpc"]["cluster_name"]
clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
assert cluster in clusters, f"no cluster {cluster}"
assert "http2_protocol_options" in str(clusters[cluster]), "the floodgate cluster must speak HTTP/2"


def entry_of(action):
    (kind, spec), = action.items()
    if kind == "remote_address":
        return "remote_address"
    if kind == "generic_key":
        return spec.get("descriptor_key", "generic_key") + "=" + spec["descriptor_value"]
    if kind == "request_headers":
        return spec["descriptor_key"]
    raise AssertionError(f"no floodgate rule form for the action {kind}")


rules = tomllib.load(open(floodgate_path, "rb"))["rule"]
decided = {
    tuple(r["descriptor"]["entries"]): r["name"]
    for r in rules
    if r.get("descriptor", {}).get("domain") == domain
}
seen = []
for vhost in hcm["route_config"]["virtual_hosts"]:
    for route in vhost["routes"]:
        for limit in route["route"].get("rate_limits", []):
            entries = tuple(entry_of(a) for a in limit["actions"])
            assert entries in decided, f"route {route['match']}: no rule decides {entries} in {domain!r}"
            seen.append(decided[entries])
assert set(seen) == set(decided.values()), f"rules no route asks: {set(decided.values()) - set(seen)}"
print("ok", len(bootstrap.static_resources.listeners), "listener,", len(seen), "descriptors decided by", sorted(set(seen)))
