# pragma version ~=0.4.3
"""
@title Test actor
@license Apache-2.0
@notice Test-only: a contract account that sends the calls a test gives it (to a board, or to
        another actor), and on receiving ether accepts it, refuses it, or re-enters a target.
        Compiled by the tests themselves (tests/vyper_source.py), never shipped.
"""


# @dev One call to make, with the wei to send along.
struct Call:
    target: address
    data: Bytes[2048]
    value: uint256


MODE_ACCEPT: constant(uint8) = 0
MODE_REFUSE: constant(uint8) = 1
MODE_REENTER: constant(uint8) = 2

# @dev What receiving ether does. Written by `set_mode`.
mode: public(uint8)

# @dev The call made on receiving ether in MODE_REENTER. Written by `set_mode`.
reentry_target: public(address)
reentry_data: public(Bytes[256])

# @dev Re-entrant calls that succeeded. Written by `__default__`.
reentered: public(uint256)

# @dev Wei received. Written by `__default__`.
received: public(uint256)


@external
@payable
def run(calls: DynArray[Call, 4]):
    """
    @notice Make the calls in order; any revert reverts them all, with its reason.
    @param calls The calls.
    """
    for c: Call in calls:
        raw_call(c.target, c.data, value=c.value)


@external
def set_mode(mode: uint8, target: address, data: Bytes[256]):
    """
    @notice Choose what receiving ether does.
    @param mode 0 accept, 1 refuse, 2 accept and re-enter `target` with `data`.
    @param target The re-entry target.
    @param data The re-entry calldata.
    """
    self.mode = mode
    self.reentry_target = target
    self.reentry_data = data


@external
@payable
def __default__():
    assert self.mode != MODE_REFUSE, "actor refuses ether"
    self.received += msg.value
    if self.mode == MODE_REENTER:
        if raw_call(self.reentry_target, self.reentry_data, revert_on_failure=False):
            self.reentered += 1
