"""Every experiment validates at every profile that defines it: a definition the runner would refuse
(an unknown option, a method a mixer cannot pair with) fails here, not an hour into a run."""

from __future__ import annotations

import pytest

from harness.pipeline.spec import profile_names


@pytest.mark.parametrize("profile", profile_names())
def test_every_profile_dry_runs(profile, tmp_path, capsys):
    from harness.cli import main

    assert main(["reproduce", "--profile", profile, "--results-dir", str(tmp_path), "--dry-run"]) == 0
    assert "would run" in capsys.readouterr().out
