"""cluster/aws.yaml is a valid `ray up` config and keeps the properties cluster/README.md promises.

All offline, nothing talks to AWS: the JSON schema shipped in the Ray wheel, Ray's own
`prepare_config` + `validate_config` (defaults merged, cross-field checks), and botocore's
RunInstances request shape for each node_config when botocore is installed. Each property check is a
function returning its problems, and each is also run on a broken copy so that it can fail.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "cluster" / "aws.yaml"
LOCALHOST = {"127.0.0.1", "localhost", "::1"}
# `ImageId` values Ray replaces with its built-in default, "Deep Learning AMI (Ubuntu 18.04) V71.0"
# (CUDA 11.2) in Ray 2.60: too old for the Python and torch this project needs.
RAY_DEFAULT_AMI_VALUES = {"", "latest_dlami"}


def load(text: str | None = None) -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text() if text is None else text)


def edited(old: str, new: str) -> dict:
    """The YAML with one textual edit, the way a person would break it."""
    text = CLUSTER_YAML.read_text()
    assert old in text, f"{old!r} not in {CLUSTER_YAML}"
    return load(text.replace(old, new, 1))


def ray_schema() -> dict:
    return json.loads((resources.files("ray.autoscaler") / "ray-schema.json").read_text())


def schema_errors(cfg: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(ray_schema())
    errors = validator.iter_errors(cfg)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}" for e in errors]


def prepared(cfg: dict) -> dict:
    """The config as `ray up` sees it after merging Ray's AWS defaults, validated by Ray itself."""
    full = prepare_config(copy.deepcopy(cfg))
    validate_config(full)
    return full


def head_type(cfg: dict) -> dict:
    return cfg["available_node_types"][cfg["head_node_type"]]


def worker_types(cfg: dict) -> dict[str, dict]:
    return {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}


def ray_start_args(commands: list[str], head: bool) -> list[str]:
    """The arguments of the `ray start` in a list of shell commands (`;`/`&&`-separated parts)."""
    for command in commands:
        for part in re.split(r";|&&|\|\|", command):
            tokens = shlex.split(part)
            if tokens[:2] == ["ray", "start"] and ("--head" in tokens) == head:
                return tokens[2:]
    raise AssertionError(f"no `ray start{' --head' if head else ''}` in {commands}")


def flag_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag:
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def dashboard_problems(full: dict) -> list[str]:
    problems = []
    head_args = ray_start_args(full["head_start_ray_commands"], head=True)
    host = flag_value(head_args, "--dashboard-host")
    if host not in LOCALHOST:
        problems.append(f"head `ray start` binds the dashboard to {host!r}; allowed: {sorted(LOCALHOST)}")
    if flag_value(head_args, "--autoscaling-config") != "~/ray_bootstrap_config.yaml":
        problems.append("head `ray start` lacks --autoscaling-config=~/ray_bootstrap_config.yaml")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        if any("0.0.0.0" in c for c in full[key]):
            problems.append(f"{key} binds something to 0.0.0.0")
    return problems


def security_problems(cfg: dict) -> list[str]:
    """Inbound rules that open anything but SSH, or groups whose rules cannot be checked here."""
    problems = []
    rules = cfg["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        ports = (rule.get("FromPort"), rule.get("ToPort"))
        if ports != (22, 22) or str(rule.get("IpProtocol")).lower() != "tcp":
            protocol = rule.get("IpProtocol")
            problems.append(f"provider.security_group: rule opens {protocol} {ports}; only TCP 22 allowed")
    for name, node_type in cfg["available_node_types"].items():
        if "SecurityGroupIds" in node_type["node_config"] or "SecurityGroups" in node_type["node_config"]:
            problems.append(
                f"{name}: names its own security group, whose rules this test cannot see; review that they "
                "open only port 22, then teach this test about it"
            )
    return problems


def install_problems(full: dict) -> list[str]:
    """setup_commands must pip-install the mounted package source, editable, and Ray at the local version."""
    problems = []
    source = [remote for remote, local in full["file_mounts"].items() if local.rstrip("/") in (".", "./")]
    if not source:
        return ["no file mount copies the repository root ('.'), the package source"]
    commands = full["setup_commands"]
    editable = re.compile(rf"pip install .*-e\s+{re.escape(source[0])}(\s|$|\[)")
    if not any(editable.search(c) for c in commands):
        problems.append(f"no setup command runs `pip install -e {source[0]}`")
    pins = [m.group(1) for c in commands for m in re.finditer(r"ray\[[^\]]*\]==([\w.]+)", c)]
    if pins != [ray.__version__]:
        problems.append(f"setup commands pin Ray {pins}; must be exactly the local version {ray.__version__}")
    return problems


# --- the schema, and Ray's own validation ----------------------------------------------------------


def test_matches_the_schema_in_the_ray_wheel():
    assert schema_errors(load()) == []


@pytest.mark.parametrize(
    "old, new, where",
    [
        ("max_workers: 8\n", "max_worker: 8\n", "max_worker"),  # top level
        ("    min_workers: 0", "    min_worker: 0", "min_worker"),  # inside a node type
        ("  ssh_user: ubuntu", "  ssh_usr: ubuntu", "ssh_usr"),  # inside auth
    ],
)
def test_schema_rejects_a_misspelt_key(old, new, where):
    errors = schema_errors(edited(old, new))
    assert any(where in e for e in errors), errors


def test_ray_accepts_it_offline():
    full = prepared(load())
    assert full["available_node_types"][full["head_node_type"]]["max_workers"] == 0
    assert sum(t.get("min_workers", 0) for t in full["available_node_types"].values()) <= full["max_workers"]


def test_ray_rejects_an_unknown_head_node_type():
    with pytest.raises(ValueError, match="head_node_type"):
        prepared(edited("head_node_type: ray.head.default", "head_node_type: ray.head.gpu"))


def test_node_configs_are_valid_run_instances_requests():
    """Ray passes node_config to EC2 RunInstances; Ray's schema does not look inside it, botocore can."""
    import botocore.session
    from botocore.validate import ParamValidator

    ec2 = botocore.session.get_session().get_service_model("ec2")
    shape = ec2.operation_model("RunInstances").input_shape

    def report(cfg, name):
        # SubnetIds is Ray's own key (it picks one SubnetId from it); everything else goes to EC2.
        node_config = cfg["available_node_types"][name]["node_config"]
        request = {k: v for k, v in node_config.items() if k != "SubnetIds"}
        return ParamValidator().validate(dict(request, MinCount=1, MaxCount=1), shape).generate_report()

    cfg = load()
    for name in cfg["available_node_types"]:
        assert report(cfg, name) == "", name
    broken = edited("InstanceType: g5.xlarge", "InstanceTyp: g5.xlarge")
    assert "InstanceTyp" in report(broken, "ray.worker.gpu")


# --- what the README promises ---------------------------------------------------------------------


def test_gpu_workers_and_a_cpu_head():
    cfg = load()
    head = head_type(cfg)
    assert "GPU" not in head["resources"] or head["resources"]["GPU"] == 0
    # The head keeps CPUs so the Tune trial drivers (CPU only) run there, not on GPU nodes.
    assert head["resources"].get("CPU", 0) >= 1

    gpu = {k: v for k, v in worker_types(cfg).items() if v["resources"].get("GPU", 0) >= 1}
    assert gpu, "no worker node type advertises a GPU"
    for name, node_type in gpu.items():
        assert node_type["node_config"]["InstanceType"].startswith("g5."), name  # A10G
        assert node_type["resources"].get("CPU", 0) >= 1, name  # Train workers need CPUs too
        assert node_type.get("min_workers", 0) == 0, f"{name}: GPU nodes should scale to zero"
        assert 1 <= node_type["max_workers"] <= cfg["max_workers"], name
        # Train workers write checkpoints to s3:// themselves; Ray gives workers no role by default.
        assert "IamInstanceProfile" in node_type["node_config"], name


def test_every_node_type_names_a_current_ami():
    for name, node_type in load()["available_node_types"].items():
        image = str(node_type["node_config"].get("ImageId", "")).strip().lower()
        assert image not in RAY_DEFAULT_AMI_VALUES, f"{name}: ImageId {image!r} is Ray's Ubuntu 18.04 DLAMI"


def test_file_mounts_include_the_package_source_and_configs():
    mounts = load()["file_mounts"]
    assert (REPO / "configs").is_dir()
    assert (REPO / mounts["~/raytickets/configs"]).resolve() == (REPO / "configs").resolve()
    for remote, local in mounts.items():
        # Relative local paths: `ray up cluster/aws.yaml` from any checkout's root.
        assert not Path(local).is_absolute() and not local.startswith("~"), (remote, local)
        assert (REPO / local).exists(), f"{remote}: local path {local!r} missing in the repository"
    root = [remote for remote, local in mounts.items() if local.rstrip("/") in (".", "./")]
    assert root == ["~/raytickets"], mounts
    assert (REPO / "pyproject.toml").is_file()


def test_setup_commands_install_raytickets():
    full = prepared(load())
    assert install_problems(full) == []
    # Each command must at least parse as bash (they run through `bash --login -c -i`).
    for command in full["setup_commands"] + full["head_setup_commands"] + full["worker_setup_commands"]:
        result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert result.returncode == 0, (command, result.stderr)


def test_install_check_can_fail():
    assert install_problems(prepared(edited("-e ~/raytickets", "~/raytickets")))
    assert install_problems(prepared(edited('==2.60.0"', '==2.59.0"')))


def test_dashboard_is_bound_to_localhost():
    assert dashboard_problems(prepared(load())) == []


def test_dashboard_check_can_fail():
    opened = edited("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0")
    assert dashboard_problems(prepared(opened))
    # Without our own start commands, Ray's AWS defaults start the dashboard on 0.0.0.0.
    defaults = load()
    del defaults["head_start_ray_commands"]
    assert dashboard_problems(prepared(defaults))


def test_no_security_group_rule_opens_more_than_ssh():
    assert security_problems(load()) == []


def _rule(port_from: int, port_to: int, protocol: str, cidr: str) -> dict:
    return {"FromPort": port_from, "ToPort": port_to, "IpProtocol": protocol, "IpRanges": [{"CidrIp": cidr}]}


@pytest.mark.parametrize(
    "rule, allowed",
    [
        (_rule(22, 22, "tcp", "203.0.113.7/32"), True),
        (_rule(8265, 8265, "tcp", "0.0.0.0/0"), False),  # the dashboard
        (_rule(0, 65535, "tcp", "10.0.0.0/8"), False),
        (_rule(-1, -1, "-1", "0.0.0.0/0"), False),  # everything
    ],
)
def test_security_check_can_fail(rule, allowed):
    cfg = load()
    cfg["provider"]["security_group"] = {"GroupName": "ray-autoscaler-raytickets", "IpPermissions": [rule]}
    assert schema_errors(cfg) == []
    assert (security_problems(cfg) == []) is allowed
    own_group = load()
    own_group["available_node_types"]["ray.worker.gpu"]["node_config"]["SecurityGroupIds"] = ["sg-0123"]
    assert security_problems(own_group)
