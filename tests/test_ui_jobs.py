"""The build-job runner: one job at a time, progress, cancel, short error messages."""
from __future__ import annotations

import errno
import threading

import pytest

from sd_unet_trt.trt_core.backends.base import BackendUnavailable
from sd_unet_trt.trt_core.checkpoint_file import CheckpointError
from sd_unet_trt.trt_core.cli.errors import exit_code_and_line
from sd_unet_trt.trt_core.file_digest import UntrustedFile
from sd_unet_trt.trt_core.jobs import CANCELLED, DONE, FAILED, JobRunner, user_message
from sd_unet_trt.trt_core.pipeline import BuildBusy
from sd_unet_trt.trt_core.profiles import Profile
from sd_unet_trt.trt_core.progress import BuildCancelled
from sd_unet_trt.trt_core.quantize import QuantizationUnavailable
from sd_unet_trt.trt_core.serving.repository import TritonExportError


def test_one_job_at_a_time_and_progress_never_goes_back():
    runner, release, reported = JobRunner(), threading.Event(), threading.Event()

    def work(progress, cancel):
        progress("export", 0.5)
        progress("export again", 0.2)  # a sub-step restarting its own count must not move the bar back
        reported.set()
        release.wait(5)
        return "engine"

    first = runner.start("first", work)
    assert first.ok and reported.wait(5)
    second = runner.start("second", work)
    assert not second.ok and "already running (first" in second.refused
    status = runner.status(first.job_id)
    assert status.active and status.phase == "export again" and status.fraction == 0.5
    assert runner.current().id == first.job_id
    release.set()
    done = runner.wait(first.job_id, timeout=5)
    assert done.state == DONE and done.result == "engine" and done.fraction == 1.0
    assert runner.current() is None and runner.latest().id == first.job_id
    assert runner.start("third", lambda p, c: None).ok


def test_cancel_reaches_the_work_and_is_reported():
    runner, started = JobRunner(), threading.Event()

    def work(progress, cancel):
        started.set()
        while True:
            cancel.raise_if_cancelled()
            threading.Event().wait(0.01)

    job = runner.start("cancel me", work)
    assert started.wait(5) and runner.cancel(job.job_id)
    assert runner.status(job.job_id).cancel_requested
    done = runner.wait(job.job_id, timeout=5)
    assert done.state == CANCELLED and "nothing was written" in done.error
    assert not runner.cancel(job.job_id)
    assert not runner.cancel("no-such-job") and runner.status("no-such-job") is None


def test_failures_become_one_line_messages():
    runner = JobRunner()

    def work(progress, cancel):
        raise ZeroDivisionError("division by zero\n  deep detail")

    done = runner.wait(runner.start("boom", work).job_id, timeout=5)
    assert done.state == FAILED and done.error == "ZeroDivisionError: division by zero (see the log)"
    assert done.to_dict()["error"] == done.error


@pytest.mark.parametrize("exc, expected", [
    (BuildBusy("another engine build is running; wait"), "another engine build is running; wait"),
    (BackendUnavailable("tensorrt: pip install tensorrt"), "tensorrt: pip install tensorrt"),
    (OSError(errno.ENOSPC, "No space left on device", "/x/engine.trt"),
     "disk full while writing /x/engine.trt; nothing was changed"),
    (BuildCancelled("build cancelled"), "cancelled; nothing was written"),
])
def test_user_messages(exc, expected):
    assert user_message(exc) == expected


def test_profile_errors_keep_their_field_messages():
    with pytest.raises(ValueError) as caught:
        Profile.static(1, 70, 64).validate()
    assert "height" in user_message(caught.value) and "multiples of 8" in user_message(caught.value)


# Errors the CLI always printed as they are, which the tab and the API once showed as
# "TypeName: ... (see the log)": one base class now decides for all three.
USER_ERRORS = [
    CheckpointError("model.safetensors changed on disk while it was read; load it again and retry"),
    QuantizationUnavailable("INT8 needs nvidia-modelopt: pip install nvidia-modelopt"),
    UntrustedFile("engine.trt is not the file that was built (sha256 differs); rebuild it"),
    TritonExportError("no engine of checkpoint 0123456789 is ready on sm_89 in /x"),
]


@pytest.mark.parametrize("exc", USER_ERRORS, ids=lambda e: type(e).__name__)
def test_a_tab_or_api_build_shows_a_user_error_as_written(exc):
    runner = JobRunner()

    def work(progress, cancel):
        raise exc

    done = runner.wait(runner.start("build", work).job_id, timeout=5)
    assert done.state == FAILED and done.error == str(exc)


@pytest.mark.parametrize("exc", USER_ERRORS, ids=lambda e: type(e).__name__)
def test_the_cli_shows_the_same_user_errors_as_written(exc):
    assert exit_code_and_line(exc) == (2, f"error: {exc}")
