"""Notifications end to end: the real sidecar's policy engine walks a rollout through
real Envoy running the .wasm; real local webhook receivers (Python's http.server) get
its events. Also `rollout-control watch --until-done` on the same rollouts.

Timing margins: steps need 1 s and 20 requests, intervals are 1 s, the engine ticks
every 250 ms, so a healthy step change takes about 1-3 s on this machine; the bounds
below are several times that."""

import json
import subprocess
import time
import urllib.request

from harness import CONTROL, Load, free_port, metric, metric_samples, wait_for
from rollout_stack import USERS, Receiver, Stack, policy, signature_ok, step

STEPS = [step(5), step(25), step(50), step(100)]


def watch(stack) -> subprocess.Popen:
    return subprocess.Popen([str(CONTROL), "--server", stack.sidecar.url, "watch", "--rollout", "fraud",
                             "--until-done", "--interval-ms", "200"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def policy_transitions(stack) -> list[dict]:
    """The policy's plan changes, oldest first."""
    return [h for h in reversed(stack.history()) if h["author"] == "policy"]


def sidecar_metrics(stack) -> dict:
    with urllib.request.urlopen(stack.sidecar.url + "/metrics", timeout=5) as r:
        return metric_samples(r.read().decode())


def test_every_event_of_both_demo_scenarios_in_order_signed_and_watch_exits(procs):
    rx = Receiver()
    try:
        # 1. healthy: promoted. The plan's webhook (JSON, every event) and the sidecar's
        # Slack-format webhook.
        s = Stack(procs, policy(STEPS), notify={"webhooks": [{"url": rx.url("/hook")}]},
                  extra=["--webhook-slack", rx.url("/slack")])
        w = watch(s)
        load = Load(s.envoy.port(), USERS, threads=3, max_seconds=90)
        try:
            assert wait_for(lambda: s.progress().get("state") == "complete", timeout=80, interval=0.5), s.progress()
        finally:
            load.stop()
        out, err = w.communicate(timeout=20)
        assert w.returncode == 0, (out, err)
        assert "promoted" in out
        assert wait_for(lambda: len(rx.got("/hook")) >= 5 and len(rx.got("/slack")) >= 5, timeout=10)
        events = rx.events("/hook")
        assert [e["kind"] for e in events] == ["started", "step_advanced", "step_advanced", "step_advanced",
                                               "promoted"], events
        assert [e["step"] for e in events] == [0, 1, 2, 3, 3]
        assert [e["weight"] for e in events] == [5, 25, 50, 100, 100]
        ids = [e["id"] for e in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        # every event is the plan change the history records, same version and reason
        transitions = policy_transitions(s)
        assert [e["plan_version"] for e in events] == [h["version"] for h in transitions]
        assert [e["reason"] for e in events] == [h["reason"] for h in transitions]
        for req in rx.got("/hook") + rx.got("/slack"):
            assert signature_ok(req), req["headers"]
            assert req["headers"]["content-type"] == "application/json"
        assert all(r["headers"]["x-rollout-event"] == e["kind"] for r, e in zip(rx.got("/hook"), events))
        slack = [json.loads(r["body"]) for r in rx.got("/slack")]
        assert all(set(m) == {"text"} and "*fraud*" in m["text"] for m in slack), slack
        assert "promoted" in slack[-1]["text"]
        # the sidecar's own list of events is the same
        listed = s.sidecar.call("GET", "/v1/events?rollout=fraud")[2]["events"]
        assert [e["id"] for e in listed] == ids
        for p in reversed(procs.procs):  # by PID; the run folder stays for the next stack
            procs.stop(p)

        # 2. bad candidate (20 % errors): rolled back, the reason names the check.
        rx.requests.clear()
        s = Stack(procs, policy(STEPS), canary_args=("--error-rate", "0.2"),
                  notify={"webhooks": [{"url": rx.url("/hook"), "events": ["started", "rolled_back"]}]})
        w = watch(s)
        load = Load(s.envoy.port(), USERS, threads=3, max_seconds=90)
        try:
            assert wait_for(lambda: s.progress().get("state") == "rolled_back", timeout=60, interval=0.5)
        finally:
            load.stop()
        out, err = w.communicate(timeout=20)
        assert w.returncode != 0, (out, err)
        assert "rolled back" in err and "error_rate" in err, err
        assert wait_for(lambda: len(rx.got("/hook")) >= 2, timeout=10)
        events = rx.events("/hook")
        assert [e["kind"] for e in events] == ["started", "rolled_back"], events
        assert events[1]["weight"] == 0 and "error_rate" in events[1]["reason"]
        assert events[1]["plan_version"] == policy_transitions(s)[-1]["version"]
        assert all(signature_ok(r) for r in rx.got("/hook"))
    finally:
        rx.close()


def test_dead_receivers_are_retried_dropped_counted_and_never_delay_the_engine(procs):
    live = Receiver()
    hanging = Receiver()
    hanging.hang.set()
    refused = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    try:
        # Each event would hold the hanging receiver's worker 3 x 1.5 s + backoff; if
        # deliveries ran on the engine's path, every step change would wait that long.
        s = Stack(procs, policy(STEPS), notify={"webhooks": [{"url": live.url()}, {"url": hanging.url()},
                                                             {"url": refused}]},
                  extra=["--webhook-timeout-ms", "1500", "--webhook-attempts", "3", "--webhook-backoff-ms", "100"])
        load = Load(s.envoy.port(), USERS, threads=3, max_seconds=90)
        try:
            assert wait_for(lambda: s.progress().get("state") == "complete", timeout=80, interval=0.5)
        finally:
            load.stop()
        t = policy_transitions(s)
        gaps = [(b["unix_ms"] - a["unix_ms"]) / 1000 for a, b in zip(t, t[1:])]
        # Each step change follows an event the hanging receiver holds for >= 4.6 s (3 tries
        # of 1.5 s + backoff); had delivery been on the engine's path, every gap after the
        # first would be that long. A step change takes 1-3 s here (the first, from the
        # start, also waits for traffic to reach 20 requests at 5 %: not compared).
        assert len(gaps) == 4 and max(gaps[1:]) < 4.5, gaps
        # the live receiver got every event promptly, despite the dead ones
        assert wait_for(lambda: len(live.got()) == 5, timeout=10)
        for req in live.got():
            e = json.loads(req["body"])
            assert req["at"] - e["unix_ms"] / 1000 < 2.0, (e["kind"], req["at"] - e["unix_ms"] / 1000)
        # the refused receiver: 3 tries per event, then dropped and counted; the hanging
        # one too, once its tries have timed out (5 events x ~4.8 s, one worker)
        def counts():
            m = sidecar_metrics(s)
            return {k: metric(m, "rollout_control_webhook_events_total", result=k)
                    for k in ("delivered", "failed", "dropped")}
        assert wait_for(lambda: counts()["failed"] == 10, timeout=40), counts()
        c = counts()
        assert c["delivered"] == 5 and c["dropped"] == 0, c
        assert metric(sidecar_metrics(s), "rollout_control_webhook_retries_total") == 20
        assert len(hanging.got()) == 15  # the hanging receiver saw every try
    finally:
        live.close()
        hanging.hang.clear()
        hanging.close()


def test_gate_webhook_holds_the_step_until_it_answers_200(procs):
    gate = Receiver(status=403)
    hook = Receiver()
    try:
        s = Stack(procs, policy([step(5), step(50)]),
                  notify={"webhooks": [{"url": hook.url()}],
                          "gates": [{"name": "qa", "url": gate.url("/confirm"), "on": "step"}]})
        load = Load(s.envoy.port(), USERS, threads=3, max_seconds=90)
        try:
            assert wait_for(lambda: s.progress().get("step") == 0, timeout=15)
            # checks pass, but the gate refuses: held at step 0, said in status and as an event
            assert wait_for(lambda: "qa answered 403" in (s.policy_status().get("held_by") or ""), timeout=20), \
                s.policy_status()
            assert wait_for(lambda: "gate_holding" in [e["kind"] for e in hook.events()], timeout=10)
            held_since = time.time()
            time.sleep(3)  # several intervals with passing checks
            assert s.progress()["step"] == 0 and s.progress()["state"] == "progressing"
            asked = gate.got("/confirm")
            assert len(asked) >= 2 and all(signature_ok(r) for r in asked)
            body = json.loads(asked[-1]["body"])
            assert body["rollout"] == "fraud" and body["gate"] == "qa" and body["step"] == 0
            # unreachable holds too
            gate.hang.set()
            time.sleep(2.5)
            assert s.progress()["step"] == 0
            gate.hang.clear()
            gate.status = 200
            assert wait_for(lambda: s.progress().get("step") == 1, timeout=15), s.progress()
            assert time.time() - held_since > 5
            # the last step needs its own 200 before the promotion: the gate answers it
            assert wait_for(lambda: s.progress().get("state") == "complete", timeout=30), s.progress()
        finally:
            load.stop()
        kinds = [e["kind"] for e in hook.events()]
        assert kinds[0] == "started" and kinds[-1] == "promoted" and "step_advanced" in kinds
        m = sidecar_metrics(s)
        assert metric(m, "rollout_control_gate_requests_total", result="held") >= 2
        assert metric(m, "rollout_control_gate_requests_total", result="confirmed") >= 2
    finally:
        gate.close()
        hook.close()
