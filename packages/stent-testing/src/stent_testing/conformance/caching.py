"""Idempotency and cache keys: ``cache_claim``, the result ``complete_task`` stores for the
key's owner, and ``cleanup_cache``."""

from __future__ import annotations

import pytest
from stent.backend import Backend

from .arrange import claim_only, events, running_step, start, stored_execution
from .base import ConformanceBase
from .builders import at

KEY = "app:work:key-1"
DIGEST = "app:work:args-1"
OTHER_DIGEST = "app:work:args-2"


class CacheContract(ConformanceBase):
    """One owner per key runs the body; its result serves every later claim until it expires."""

    @pytest.mark.asyncio
    async def test_first_claim_makes_the_caller_owner(self, backend: Backend) -> None:
        _, task = await start(backend)
        claim = await backend.cache_claim(KEY, task.id, DIGEST, None, at(1))
        assert claim.status == "owner"
        assert claim.result is None

    @pytest.mark.asyncio
    async def test_owner_result_is_stored_on_completion_and_hit_later(
        self, backend: Backend
    ) -> None:
        _, owner = await start(backend)
        assert (await backend.cache_claim(KEY, owner.id, DIGEST, None, at(1))).status == "owner"
        assert await backend.complete_task(owner.id, owner.fence, b'"cached"', at(2))
        later, task = await start(backend, now=at(3))
        claim = await backend.cache_claim(KEY, task.id, DIGEST, None, at(4))
        assert (claim.status, claim.result) == ("hit", b'"cached"')
        assert events(await stored_execution(backend, later.id))[-1] == "cache_hit"

    @pytest.mark.asyncio
    async def test_a_live_result_for_other_arguments_is_a_conflict(
        self, backend: Backend
    ) -> None:
        _, owner = await start(backend)
        await backend.cache_claim(KEY, owner.id, DIGEST, None, at(1))
        await backend.complete_task(owner.id, owner.fence, b"1", at(2))
        later, task = await start(backend, now=at(3))
        claim = await backend.cache_claim(KEY, task.id, OTHER_DIGEST, None, at(4))
        assert (claim.status, claim.arg_digest) == ("conflict", DIGEST)
        assert "cache_hit" not in events(await stored_execution(backend, later.id))

    @pytest.mark.asyncio
    async def test_an_unfinished_owner_makes_the_key_busy(self, backend: Backend) -> None:
        _, owner = await start(backend)
        await backend.cache_claim(KEY, owner.id, DIGEST, None, at(1))
        _, task = await start(backend, now=at(2))
        claim = await backend.cache_claim(KEY, task.id, DIGEST, None, at(3))
        assert (claim.status, claim.owner_task_id) == ("busy", owner.id)
        # still busy while the owner waits for its next attempt
        assert await backend.retry_task(owner.id, owner.fence, b'"e"', at(10), at(4))
        claim = await backend.cache_claim(KEY, task.id, DIGEST, None, at(5))
        assert (claim.status, claim.owner_task_id) == ("busy", owner.id)

    @pytest.mark.asyncio
    async def test_the_owner_may_claim_its_key_again(self, backend: Backend) -> None:
        _, owner = await start(backend)
        assert (await backend.cache_claim(KEY, owner.id, DIGEST, None, at(1))).status == "owner"
        assert (await backend.cache_claim(KEY, owner.id, DIGEST, None, at(2))).status == "owner"

    @pytest.mark.asyncio
    async def test_a_failed_owner_hands_the_key_to_the_next_claimer(
        self, backend: Backend
    ) -> None:
        _, owner = await start(backend)
        await backend.cache_claim(KEY, owner.id, DIGEST, None, at(1))
        assert await backend.fail_task(owner.id, owner.fence, b'"boom"', at(2), None)
        _, task = await start(backend, now=at(3))
        assert (await backend.cache_claim(KEY, task.id, DIGEST, None, at(4))).status == "owner"
        assert await backend.complete_task(task.id, task.fence, b'"second"', at(5))
        _, third = await start(backend, now=at(6))
        claim = await backend.cache_claim(KEY, third.id, DIGEST, None, at(7))
        assert (claim.status, claim.result) == ("hit", b'"second"')

    @pytest.mark.asyncio
    async def test_a_cancelled_owner_hands_the_key_over(self, backend: Backend) -> None:
        _, root = await start(backend)
        owner = await running_step(backend, root, 0)
        await backend.cache_claim(KEY, owner.id, DIGEST, None, at(1))
        assert await backend.cancel_task(owner.id, owner.fence, at(2))
        _, task = await start(backend, now=at(3))
        assert (await backend.cache_claim(KEY, task.id, DIGEST, None, at(4))).status == "owner"

    @pytest.mark.asyncio
    async def test_an_owner_that_is_gone_hands_the_key_over(self, backend: Backend) -> None:
        # an entry whose owner is no stored task (never was, or was deleted)
        gone = await backend.cache_claim(KEY, "no-such-task", DIGEST, None, at(1))
        assert gone.status == "owner"
        _, task = await start(backend, now=at(3))
        claim = await backend.cache_claim(KEY, task.id, DIGEST, None, at(4))
        assert (claim.status, claim.owner_task_id) == ("owner", task.id)

    @pytest.mark.asyncio
    async def test_an_owner_cancelled_by_its_execution_finishing_hands_the_key_over(
        self, backend: Backend
    ) -> None:
        _, root = await start(backend)
        owner = await running_step(backend, root, 0)
        await backend.cache_claim(KEY, owner.id, DIGEST, None, at(1))
        _, task = await start(backend, now=at(2))
        claim = await backend.cache_claim(KEY, task.id, DIGEST, None, at(2))
        assert (claim.status, claim.owner_task_id) == ("busy", owner.id)
        # the execution completes with the owner still running: the owner is cancelled
        assert await backend.complete_task(root.id, root.fence, b"1", at(3))
        assert (await backend.cache_claim(KEY, task.id, DIGEST, None, at(4))).status == "owner"
        assert await backend.cleanup_executions(at(10)) == 1
        assert await backend.get_task(owner.id) is None
        claim = await backend.cache_claim(KEY, task.id, DIGEST, None, at(11))
        assert (claim.status, claim.owner_task_id) == ("owner", task.id)

    @pytest.mark.asyncio
    async def test_an_expired_result_is_replaced(self, backend: Backend) -> None:
        _, owner = await start(backend)
        await backend.cache_claim(KEY, owner.id, DIGEST, 10.0, at(1))
        await backend.complete_task(owner.id, owner.fence, b'"old"', at(2))  # expires at 12
        _, task = await start(backend, now=at(3))
        claim = await backend.cache_claim(KEY, task.id, DIGEST, 10.0, at(11.5))
        assert (claim.status, claim.result) == ("hit", b'"old"')
        assert (await backend.cache_claim(KEY, task.id, DIGEST, 10.0, at(13))).status == "owner"
        assert await backend.complete_task(task.id, task.fence, b'"new"', at(14))
        _, third = await start(backend, now=at(15))
        claim = await backend.cache_claim(KEY, third.id, DIGEST, 10.0, at(23))
        assert (claim.status, claim.result) == ("hit", b'"new"')

    @pytest.mark.asyncio
    async def test_a_result_without_ttl_never_expires(self, backend: Backend) -> None:
        _, owner = await start(backend)
        await backend.cache_claim(KEY, owner.id, DIGEST, None, at(1))
        await backend.complete_task(owner.id, owner.fence, b"1", at(2))
        _, task = await start(backend, now=at(3))
        far = at(10 * 365 * 24 * 3600)
        assert (await backend.cache_claim(KEY, task.id, DIGEST, None, far)).status == "hit"
        assert await backend.cleanup_cache(far) == 0

    @pytest.mark.asyncio
    async def test_a_stale_completion_stores_no_result(self, backend: Backend) -> None:
        _, owner = await start(backend)
        await backend.cache_claim(KEY, owner.id, DIGEST, None, at(1))
        # the owner's worker dies; another worker claims it again with a new fence
        again = await claim_only(backend, owner.id, worker="worker-2", now=at(61),
                                 lease_until=at(120))
        assert not await backend.complete_task(owner.id, owner.fence, b'"stale"', at(62))
        _, task = await start(backend, now=at(63))
        claim = await backend.cache_claim(KEY, task.id, DIGEST, None, at(64))
        assert (claim.status, claim.owner_task_id) == ("busy", owner.id)
        assert (await backend.cache_claim(KEY, owner.id, DIGEST, None, at(65))).status == "owner"
        assert await backend.complete_task(owner.id, again.fence, b'"fresh"', at(66))
        claim = await backend.cache_claim(KEY, task.id, DIGEST, None, at(67))
        assert (claim.status, claim.result) == ("hit", b'"fresh"')

    @pytest.mark.asyncio
    async def test_a_stored_result_outlives_its_execution(self, backend: Backend) -> None:
        _, owner = await start(backend)
        await backend.cache_claim(KEY, owner.id, DIGEST, None, at(1))
        await backend.complete_task(owner.id, owner.fence, b'"kept"', at(2))
        assert await backend.cleanup_executions(at(10)) == 1
        _, task = await start(backend, now=at(11))
        claim = await backend.cache_claim(KEY, task.id, DIGEST, None, at(12))
        assert (claim.status, claim.result) == ("hit", b'"kept"')

    @pytest.mark.asyncio
    async def test_cleanup_cache_deletes_only_expired_results(self, backend: Backend) -> None:
        owners = {}
        for key, ttl in (("expired", 5.0), ("live", 100.0), ("forever", None)):
            _, owners[key] = await start(backend)
            await backend.cache_claim(key, owners[key].id, DIGEST, ttl, at(1))
            await backend.complete_task(owners[key].id, owners[key].fence, b"1", at(2))
        _, running = await start(backend)
        await backend.cache_claim("in-progress", running.id, DIGEST, 1.0, at(1))
        assert await backend.cleanup_cache(at(50)) == 1
        _, task = await start(backend, now=at(51))
        statuses = {
            key: (await backend.cache_claim(key, task.id, DIGEST, None, at(52))).status
            for key in ("expired", "live", "forever", "in-progress")
        }
        assert statuses == {
            "expired": "owner", "live": "hit", "forever": "hit", "in-progress": "busy",
        }

    @pytest.mark.asyncio
    async def test_cleanup_cache_respects_its_limit(self, backend: Backend) -> None:
        for i in range(3):
            _, owner = await start(backend)
            await backend.cache_claim(f"k{i}", owner.id, DIGEST, 1.0, at(1))
            await backend.complete_task(owner.id, owner.fence, b"1", at(2))
        assert await backend.cleanup_cache(at(10), limit=2) == 2
        assert await backend.cleanup_cache(at(10), limit=2) == 1
        assert await backend.cleanup_cache(at(10), limit=2) == 0
