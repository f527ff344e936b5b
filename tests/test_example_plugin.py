"""The third-party example plugin (examples/c4s-example-plugin), installed for real.

The package is pip-installed (offline, no deps) into a temporary target folder
once per module; each check then runs in a subprocess with that folder on
PYTHONPATH, so c4s finds the plugin through its ``c4s`` entry point exactly as
it would after ``pip install c4s-example-plugin``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "c4s-example-plugin"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example plugin installed into a temporary folder (not the venv)."""
    base = tmp_path_factory.mktemp("example_plugin")
    src = base / "src"
    # build from a copy, so setuptools' build/ and *.egg-info stay out of the repo
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = base / "site"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "--target", str(target), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert (target / "c4s_example_plugin.py").is_file()
    return target


def run_py(site: Path, code: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("C4S_")}
    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1", **env_extra)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=300, env=env, cwd=str(site.parent),
    )


def ok(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def test_example_plugin_registers_with_origin(site):
    out = ok(run_py(site, """
        import json, c4s_core
        regs = c4s_core.get_registries()
        info = regs.pm.infos["example"]
        print(json.dumps({
            "style": regs.sketch_style.get("ballpoint").as_dict(),
            "alias": regs.sketch_style.get("biro").name,
            "sampler": regs.sampler.get("deis").as_dict(),
            "builtin": info.builtin,
            "hooks": info.hooks,
            "failures": [str(f) for f in regs.pm.failures],
        }))
    """))
    data = json.loads(out.strip().splitlines()[-1])
    for key in ("style", "sampler"):
        entry = data[key]
        assert entry["plugin"] == "example"
        assert entry["distribution"] == "c4s-example-plugin"
        assert entry["version"] == "0.1.0"
        assert entry["description"]
    assert data["style"]["class"] == "c4s_example_plugin.Ballpoint"
    assert data["alias"] == "ballpoint"
    assert data["builtin"] is False
    assert set(data["hooks"]) == {"register_commands", "register_samplers", "register_sketch_styles"}
    assert not [f for f in data["failures"] if "example" in f]


def test_example_deis_sampler_steps(site):
    out = ok(run_py(site, """
        import c4s_core, torch
        from c4s_core.errors import ConfigError
        regs = c4s_core.get_registries()
        sampler = regs.sampler.build("deis", {"steps": 4, "order": 3})
        sched = sampler.make_scheduler(num_train_timesteps=100)
        assert type(sched).__name__ == "DEISMultistepScheduler", type(sched)
        assert sched.config.solver_order == 3 and sched.config.num_train_timesteps == 100
        assert len(sched.timesteps) == 4
        assert sampler.timesteps(100) == [int(t) for t in sched.timesteps]
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, 8, 8, generator=g) * sched.init_noise_sigma
        for t in sched.timesteps:
            eps = torch.randn(x.shape, generator=g)
            x = sched.step(eps, t, sched.scale_model_input(x, t)).prev_sample
        assert x.shape == (2, 3, 8, 8) and torch.isfinite(x).all()
        noisy = sched.add_noise(x, torch.randn_like(x), sched.timesteps[:1])
        assert noisy.shape == x.shape
        # defaults and validation
        assert regs.sampler.build("deis").config.steps == 20
        for bad, field in (({"steps": 0}, "steps"), ({"order": 4}, "order"),
                           ({"steps": 1001}, "steps"), ({"sigma": 1}, "sigma")):
            try:
                regs.sampler.build("deis", bad)
            except ConfigError as err:
                assert field + ":" in str(err), str(err)
            else:
                raise AssertionError(f"no ConfigError for {bad}")
        try:
            regs.sampler.build("deis", {"steps": 50}).make_scheduler(num_train_timesteps=10)
        except ConfigError as err:
            assert "num_train_timesteps=10" in str(err), str(err)
        else:
            raise AssertionError("steps > num_train_timesteps accepted")
        print("OK")
    """))
    assert out.strip().endswith("OK")


def test_example_ballpoint_renders(site):
    out = ok(run_py(site, """
        import numpy as np, c4s_core
        from PIL import Image, ImageDraw
        im = Image.new("RGB", (96, 120), (210, 200, 190))
        d = ImageDraw.Draw(im)
        d.ellipse((14, 12, 82, 108), fill=(225, 180, 150), outline=(90, 60, 40), width=2)
        d.ellipse((14, 6, 82, 36), fill=(50, 35, 25))
        d.ellipse((30, 48, 42, 56), fill=(30, 30, 30)); d.ellipse((54, 48, 66, 56), fill=(30, 30, 30))
        photo = np.asarray(im)
        style = c4s_core.get_registries().sketch_style.build("ballpoint")
        assert style.renders and style.prompts
        out = style.render(photo)
        assert out.dtype == np.uint8 and out.shape == photo.shape
        assert np.array_equal(out, style.render(photo))
        assert np.median(out) > 200 and (out.min(axis=2) < 100).any()
        ink = out[out.min(axis=2) < 150]
        assert (ink[:, 2] > ink[:, 0]).all()  # blue ink
        assert style.render(np.zeros((3, 2, 3), np.uint8)).shape == (3, 2, 3)
        print("OK")
    """))
    assert out.strip().endswith("OK")


def test_example_register_commands(site):
    out = ok(run_py(site, """
        import click, c4s_core
        from click.testing import CliRunner
        regs = c4s_core.get_registries()
        cli = click.Group("c4s")
        regs.pm.hook.register_commands(cli=cli)
        assert "example-hello" in cli.commands, sorted(cli.commands)
        res = CliRunner().invoke(cli, ["example-hello", "--name", "tester"])
        assert res.exit_code == 0, res.output
        print(res.output)
    """))
    assert "Hello, tester" in out and "ballpoint" in out and "deis" in out


GONE = """
    import c4s_core
    from c4s_core.errors import UnknownComponentError
    regs = c4s_core.get_registries()
    for kind, name in (("sketch_style", "ballpoint"), ("sampler", "deis")):
        try:
            regs[kind].get(name)
        except UnknownComponentError:
            pass
        else:
            raise AssertionError(f"{name} still registered")
    assert "example" not in regs.pm.infos
    assert "example" in regs.pm.blocked, regs.pm.blocked
    assert "pencil" in regs.sketch_style  # built-ins still load
    print("GONE")
"""


@pytest.mark.parametrize(
    "env",
    [
        {"C4S_BLOCK_PLUGINS": "example"},
        {"C4S_BLOCK_PLUGINS": "c4s-example-plugin"},
        {"C4S_LOAD_PLUGINS": ""},
        {"C4S_LOAD_PLUGINS": "something-else"},
    ],
    ids=["block-name", "block-distribution", "allow-empty", "allow-other"],
)
def test_example_plugin_blocked(site, env):
    assert ok(run_py(site, GONE, **env)).strip().endswith("GONE")


def test_example_plugin_allow_listed(site):
    out = ok(run_py(site, """
        import c4s_core
        print(c4s_core.get_registries().sketch_style.get("ballpoint").origin.plugin)
    """, C4S_LOAD_PLUGINS="example"))
    assert out.strip() == "example"


def _cli_has_plugins() -> bool:
    if importlib.util.find_spec("c4s_core.cli") is None:
        return False
    try:
        from c4s_core import cli
    except Exception:
        return False
    group = getattr(cli, "cli", None)
    return group is not None and "plugins" in getattr(group, "commands", {})


# CLI CHECK: needs `c4s plugins --json` and the global `--block` option (c4s_core/cli.py).
def run_cli(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("C4S_")}
    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "c4s_core.cli", *args],
        capture_output=True, text=True, timeout=300, env=env, cwd=str(site.parent),
    )


@pytest.mark.skipif(not _cli_has_plugins(), reason="cli not yet available")
def test_example_plugin_in_cli_plugins_json(site):
    def plugins_json(*global_opts: str) -> dict:
        out = ok(run_cli(site, *global_opts, "plugins", "--json"))
        return json.loads(out[out.index("{"):])

    data = plugins_json()
    plugin = [p for p in data["plugins"] if p["name"] == "example"]
    assert plugin, data["plugins"]
    assert plugin[0]["distribution"] == "c4s-example-plugin"
    assert plugin[0]["version"] == "0.1.0" and plugin[0]["builtin"] is False
    assert "register_sketch_styles" in plugin[0]["hooks"]
    comps = {(c["kind"], c["name"]): c for c in data["components"]}
    ball = comps[("sketch_style", "ballpoint")]
    assert ball["plugin"] == "example" and ball["distribution"] == "c4s-example-plugin"
    assert ball["version"] == "0.1.0" and ball["aliases"] == ["biro"]
    assert comps[("sampler", "deis")]["plugin"] == "example"

    blocked = plugins_json("--block", "example")
    assert not [p for p in blocked["plugins"] if p["name"] == "example"]
    assert not [c for c in blocked["components"] if c["name"] in ("ballpoint", "deis")]


@pytest.mark.skipif(not _cli_has_plugins(), reason="cli not yet available")
def test_example_plugin_command_in_cli(site):
    out = ok(run_cli(site, "example-hello", "--name", "cli"))
    assert "Hello, cli" in out and "ballpoint" in out
    res = run_cli(site, "--block", "example", "example-hello")
    assert res.returncode != 0 and "No such command" in res.stderr, res.stdout + res.stderr
