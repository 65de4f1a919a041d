"""The README's "Try it" commands, run as written (only the server's address changed) against
the real server: every grpcurl call and the CLI must succeed and say what the README implies."""

from __future__ import annotations

import asyncio
import re

from tests.integration.conftest import ROOT


def try_it_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Try it"):]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


async def test_the_readme_try_it_commands_succeed(target: str) -> None:
    script = try_it_block().replace("127.0.0.1:4603", target).replace(
        "vision-client detect", f"vision-client --target {target} detect")
    process = await asyncio.create_subprocess_exec(
        "bash", "-euo", "pipefail", "-c", script, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 300)
    assert process.returncode == 0, err.decode()
    text = out.decode()
    for expected in ("vision.v1.SearchService", '"SERVING"', '"person"', "Egyptian cat",
                     "Invoice #A-1234", '"yunet_mobilefacenet"', '"id": "coffee"', "cat ",
                     '"duplicate_of": "', '"name": "Barack Obama"', '"id": "obama"'):
        assert expected in text, expected
