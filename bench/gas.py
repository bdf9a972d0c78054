"""Gas of every TaskBoard call and the per-worker total (join + commit + reveal
+ claim) for n = 2, 8, 32, 64 on ape's local test chain.

Run from the repository root:  python bench/gas.py  (the venv's python, with
the venv's bin on PATH so ape-vyper finds the pinned compiler).

A task's one-off costs land on single workers: the join that fills the
roster also fixes the coin, and the first reveal stores the result. Here the
worker that fills the roster also reveals first, so it pays both: the worst
case. The table shows the typical worker's calls (the cheapest of each call: a
worker that neither fills the roster nor reveals first), its total, the two
one-offs, the most expensive worker (typical + both one-offs) against the
target, and the mean per worker with the one-offs shared out.
"""

import statistics

from ape import accounts, networks, project
from eth_utils import keccak

from ape_crowdml.board import NEUTRAL_SINK

SIZES = (2, 3, 8, 32, 64)
DEPOSIT = 2 * 10**16
WINDOW = 100
TARGET_PER_WORKER = 175_000
TARGET_PUBLISH = 250_000
# What Requester.publish puts in the Published event by default: the spec's URL in its store.
TYPICAL_SPEC_URI = "s3://crowdml-tasks/artifacts/0x" + keccak(b"spec").hex()


# What a worker announces by default: its public bucket's URL of the sealed result.
TYPICAL_RESULT_URI = "https://results.example.org/crowdml/0x" + keccak(b"sealed").hex()


def run_task(board, requester, crew):
    n = len(crew)
    gas = {"join": [], "commit": [], "reveal": [], "claim": []}
    receipt = board.publish(keccak(b"spec"), keccak(b"data"), n, DEPOSIT, WINDOW, WINDOW, WINDOW,
                            b"\x00" * 32, [], TYPICAL_SPEC_URI, value=10**18, sender=requester)
    publish_gas = receipt.gas_used
    task_id = receipt.decode_logs(board.Published)[0].task_id
    result = keccak(b"result")
    for w in crew:
        gas["join"].append(board.join(task_id, value=DEPOSIT, sender=w).gas_used)
    for w in crew:
        commitment = board.commitment_of(result, keccak(w.address.encode()), w, task_id)
        gas["commit"].append(board.commit(task_id, commitment, sender=w).gas_used)
    # The last joiner filled the roster; it reveals first, paying both one-offs.
    for w in reversed(crew):
        gas["reveal"].insert(0, board.reveal(task_id, result, keccak(w.address.encode()), sender=w).gas_used)
    settle_gas = board.settle(task_id, sender=requester).gas_used
    # One announcement serves the requester: one worker pays it, once per task.
    announce_gas = board.announce(task_id, TYPICAL_RESULT_URI, sender=crew[0]).gas_used
    for w in crew:
        gas["claim"].append(board.claim(task_id, sender=w).gas_used)
    per_worker = [sum(calls) for calls in zip(*gas.values())]
    return publish_gas, settle_gas, gas, per_worker, announce_gas


def main():
    with networks.parse_network_choice("ethereum:local:test"):
        requester = accounts.test_accounts[0]
        crew = [accounts.test_accounts.generate_test_account() for _ in range(max(SIZES))]
        for w in crew:
            requester.transfer(w, 10**18)
        board = project.TaskBoard.deploy(NEUTRAL_SINK, sender=requester)

        print(f"{'n':>3} {'publish':>8} {'join':>7} {'commit':>7} {'reveal':>7} {'claim':>7} "
              f"{'worker':>8} {'coin fix':>9} {'1st result':>10} {'most exp.':>10} {'settle':>7} "
              f"{'mean/worker':>12}")
        worker_total, announce = {}, {}
        for n in SIZES:
            publish_gas, settle_gas, gas, per_worker, announce[n] = run_task(
                board, requester, crew[:n])
            # Every call but the filling join and the first reveal costs the same;
            # the cheapest of each call is the typical worker's.
            typical = {call: min(values) for call, values in gas.items()}
            worker_total[n] = sum(typical.values())
            coin_fix = gas["join"][-1] - typical["join"]
            first_result = gas["reveal"][-1] - typical["reveal"]
            most_expensive = max(per_worker)
            print(f"{n:>3} {publish_gas:>8} {typical['join']:>7.0f} {typical['commit']:>7.0f} {typical['reveal']:>7.0f} "
                  f"{typical['claim']:>7.0f} {worker_total[n]:>8.0f} {coin_fix:>9.0f} {first_result:>10.0f} "
                  f"{most_expensive:>10} {settle_gas:>7} {statistics.mean(per_worker):>12.0f}")
            if publish_gas > TARGET_PUBLISH:
                print(f"    publish over the {TARGET_PUBLISH} target")
            if most_expensive > TARGET_PER_WORKER:
                print(f"    most expensive worker over the {TARGET_PER_WORKER} target")
        print(f"announce (one worker, once per agreed task, a {len(TYPICAL_RESULT_URI)}-byte "
              f"URI): {', '.join(f'{n}: {gas}' for n, gas in announce.items())}")
        growth = worker_total[max(SIZES)] / worker_total[min(SIZES)] - 1
        print(f"worker total growth n={max(SIZES)} vs n={min(SIZES)}: {growth:+.2%} (target ≤ +2%)")


# ---------------------------------------------------------------- model purchase

PURCHASE_SAMPLES = (256, 1024, 4096)
TARGET_FINALIZE_4096 = 60_000  # beyond the calldata
PRICE = 3 * 10**16
REWARD = 3 * 10**15


def calldata_gas(data: bytes) -> int:
    """The intrinsic cost of a transaction: 21,000 plus 16 gas per non-zero byte, 4 per zero."""
    return 21_000 + sum(16 if b else 4 for b in data)


def purchase_round(market, board, buyer, seller, crew, samples):
    """One whole purchase of a model right on every sample; returns gas per step."""
    from ape import chain

    from crowdml_compute.digest import bits_body, encode_bits

    head, tail = b'{"hparams":{"model_digest":"0x', b'","subset_size":' + str(samples).encode() + b"}}"
    gas = {}
    receipt = market.open_order(
        PRICE, 9000, samples, keccak(b"test data"), head, tail, (len(crew), DEPOSIT, REWARD, WINDOW, WINDOW, WINDOW),
        (chain.blocks.head.number + WINDOW, WINDOW, WINDOW, 4), REWARD, value=PRICE + REWARD, sender=buyer)
    gas["open"] = receipt.gas_used
    order_id = receipt.decode_logs(market.OrderOpened)[0].order_id
    gas["offer"] = market.offer(order_id, keccak(b"model"), "https://models.example/m.crowdml", head, tail,
                                value=REWARD, sender=seller).gas_used
    gas["release"] = market.release_data(order_id, sender=buyer).gas_used
    task_id = market.order(order_id).task_id
    bits = [1] * samples
    result = keccak(encode_bits(bits))
    workers = [board.join(task_id, value=DEPOSIT, sender=w) for w in crew]
    keys = [market.present_key(order_id, keccak(w.address.encode()), sender=w) for w in crew]
    gas["present_key"] = keys[0].gas_used
    workers += keys
    gas["serve"] = market.serve(order_id, list(crew), [keccak(b"box" + w.address.encode()) for w in crew],
                                sender=seller).gas_used
    workers += [board.commit(task_id, board.commitment_of(result, keccak(w.address.encode()), w, task_id),
                             sender=w) for w in crew]
    workers += [board.reveal(task_id, result, keccak(w.address.encode()), sender=w) for w in crew]
    gas["advance"] = market.advance(order_id, sender=seller).gas_used
    workers += [board.claim(task_id, sender=w) for w in crew]
    gas["workers"] = sum(receipt.gas_used for receipt in workers)
    receipt = market.finalize(order_id, bits_body(bits), sender=seller)
    gas["finalize"] = receipt.gas_used
    gas["finalize calldata"] = calldata_gas(bytes(receipt.transaction.data))
    gas["claim"] = market.claim(order_id, sender=seller).gas_used
    return gas


def purchase_figures():
    """Gas of a model purchase: each step for n = 3, and finalize (digest check + popcount) for
    256, 1,024 and 4,096 evaluated samples, beyond its calldata (21,000 + 16/4 gas a byte)."""
    with networks.parse_network_choice("ethereum:local:test"):
        buyer, seller = accounts.test_accounts[0], accounts.test_accounts[8]
        crew = [accounts.test_accounts[i] for i in (1, 2, 3)]
        board = project.TaskBoard.deploy(NEUTRAL_SINK, sender=buyer)
        market = project.ModelPurchase.deploy(board, sender=buyer)
        purchase_round(market, board, buyer, seller, crew, 8)  # first-use storage out of the way
        print(f"{'samples':>7} {'open':>7} {'offer':>7} {'release':>8} {'serve':>7} {'advance':>8} {'finalize':>9} "
              f"{'calldata':>9} {'beyond':>7} {'claim':>7} {'purchase':>9} {'+ workers':>10}")
        for samples in PURCHASE_SAMPLES:
            gas = purchase_round(market, board, buyer, seller, crew, samples)
            beyond = gas["finalize"] - gas["finalize calldata"]
            whole = sum(gas[step] for step in ("open", "offer", "release", "serve", "advance", "finalize"))
            print(f"{samples:>7} {gas['open']:>7} {gas['offer']:>7} {gas['release']:>8} {gas['serve']:>7} {gas['advance']:>8} "
                  f"{gas['finalize']:>9} {gas['finalize calldata']:>9} {beyond:>7} {gas['claim']:>7} {whole:>9} {whole + gas['workers']:>10}")
            if samples == 4096 and beyond > TARGET_FINALIZE_4096:
                print(f"    finalize over the {TARGET_FINALIZE_4096} target")
        print(f"purchase = open + offer + release + serve + advance (settles the board task) + finalize, n = 3; "
              f"+ workers adds the three workers' present_key ({gas['present_key']} each), join, commit, "
              "reveal and claim on the board")


if __name__ == "__main__":
    main()
    purchase_figures()
