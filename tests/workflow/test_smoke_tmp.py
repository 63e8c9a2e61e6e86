import time
from tests.workflow.conftest import Harness, referral, reply
from tests.workflow.profiles import CH, at

def test_smoke(harness: Harness) -> None:
    for i in range(4):
        t0 = time.monotonic()
        harness.dovecot.append(referral(CH))
        t1 = time.monotonic()
        harness._wait(lambda: harness._inbound_count() > i, "x")
        t2 = time.monotonic()
        harness._wait(lambda: harness._pending_inbound() == 0, "x")
        t3 = time.monotonic()
        harness.settle()
        t4 = time.monotonic()
        print("append", t1-t0, "stored", t2-t1, "processed", t3-t2, "sent", t4-t3)
