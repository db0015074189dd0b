"""The runner and its episode schedule: every episode once, in a deterministic assignment."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from egolens.episodes import EpisodeSchedule
from tests.conftest import ROOT, ToyEnv, toy_runner


def simulate(schedule: EpisodeSchedule, ends: list[set[int]]) -> list[tuple[int, int]]:
    """Drive a schedule with the envs that end on each step; (env, episode) in start order."""
    started = sorted(schedule.start().items())
    for ended in ends:
        if schedule.done:
            break
        offers = schedule.offers()
        finishing = [i for i in schedule.active if i in ended]
        started += [(i, offers[i]) for i in finishing if i in offers]
        schedule.advance(finishing, offers)
    return started


def test_one_env_plays_the_episodes_in_order():
    started = simulate(EpisodeSchedule(total=4, num_envs=1), [{0}] * 10)
    assert started == [(0, 0), (0, 1), (0, 2), (0, 3)]


def test_envs_take_the_lowest_unstarted_episodes_and_every_episode_runs_once():
    schedule = EpisodeSchedule(total=7, num_envs=3)
    started = simulate(schedule, [{2}, {0, 2}, set(), {1}, {0, 1, 2}, {0, 1, 2}, {0, 1, 2}])
    # env 2 ends first: it takes its offer 5 (envs 0, 1 were offered 3, 4), so 3 and 4 stay free.
    assert started[:4] == [(0, 0), (1, 1), (2, 2), (2, 5)]
    # Next step the unstarted are 3, 4, 6: offered to envs 0, 1, 2 in order; envs 0 and 2 end.
    assert started[4:6] == [(0, 3), (2, 6)]
    assert sorted(e for _, e in started) == list(range(7))
    assert schedule.done


def test_a_schedule_resumes_from_its_state():
    a = EpisodeSchedule(total=9, num_envs=2)
    simulate(a, [{1}, {0}])
    b = EpisodeSchedule(total=9, num_envs=2)
    b.load_state_dict(a.state_dict())
    assert b.offers() == a.offers() and b.active == a.active


@pytest.mark.parametrize("num_envs", [1, 2])
def test_an_ended_env_resets_itself_with_the_seed_it_was_handed(num_envs):
    with toy_runner(num_envs) as runner:
        runner.reset(dict.fromkeys(range(num_envs), 1))       # seed 1 lasts 3 steps
        for _ in range(2):
            runner.step_async(dict.fromkeys(range(num_envs), 0), {})
            assert not any(t.ended for t in runner.step_wait().values())
        runner.step_async(dict.fromkeys(range(num_envs), 0), dict.fromkeys(range(num_envs), 6))
        runner.wait_any()
        last = runner.step_wait()
    for transition in last.values():
        assert transition.ended and transition.truncated
        np.testing.assert_array_equal(transition.reset_obs, ToyEnv().reset(seed=6)[0])



@pytest.mark.parametrize("num_envs", [1, 2])
def test_an_env_stepped_without_a_seed_stays_ended_until_reset_by_a_call_of_its_own(num_envs):
    with toy_runner(num_envs) as runner:
        runner.reset(dict.fromkeys(range(num_envs), 1))       # seed 1 lasts 3 steps
        for _ in range(3):
            for i in range(num_envs):
                runner.send(i, 0)
            last = runner.step_wait()
        assert all(t.ended and t.reset_obs is None for t in last.values())
        for i in range(num_envs):
            runner.send_reset(i, 6)
        first = {}
        while len(first) < num_envs:
            first |= runner.receive()
        with pytest.raises(RuntimeError, match="already stepping"):
            runner.send_reset(0, 6) or runner.send(0, 0)
        runner.step_wait()
    for obs in first.values():
        np.testing.assert_array_equal(obs, ToyEnv().reset(seed=6)[0])

def episode_length(env, seed: int) -> tuple[int, int]:
    """(seed, steps) of one episode of IDLE from `seed`: a whole-episode job for `map`."""
    env.reset(seed=seed)
    steps = 0
    while True:
        steps += 1
        _, _, terminated, truncated, _ = env.step(1)
        if terminated or truncated:
            return seed, steps


@pytest.mark.parametrize("num_envs", [1, 2])
def test_map_runs_whole_episode_jobs_on_free_envs_in_item_order(num_envs):
    done = []
    with toy_runner(num_envs) as runner:
        results = runner.map(episode_length, [5, 2, 7, 4, 0], progress=lambda: done.append(1))
    assert results == [(5, 3), (2, 4), (7, 5), (4, 2), (0, 2)]     # seed s lasts 2 + s % 4 steps
    assert len(done) == 5


def test_workers_exit_when_the_main_process_is_killed_without_closing_the_runner():
    script = ("import sys, time\nfrom tests.conftest import toy_runner\nrunner = toy_runner(3)\n"
              "print(' '.join(str(p.pid) for p in runner._procs), flush=True)\ntime.sleep(60)\n")
    main = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in main.stdout.readline().split()]
    assert len(workers) == 3
    main.send_signal(signal.SIGKILL)
    main.wait()
    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers), "orphaned env workers kept running"


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an exited child nobody reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state
