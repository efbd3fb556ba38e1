"""Conversations: State table, one partition per conversation, scoped to tenant AND user.

pk `TENANT#<t>#USER#<u>#CONV#<id>`:
- sk `META`: settings (system prompt, profile, model, budget), the message counter `seq`, what
  the summary covers (`covers_through`), the pinned message numbers (`pinned`, a number set) and
  unpinned messages the summary may not cover (`unfolded`, a number set), running totals, the
  in-flight turn's claim (`turn_id`, `turn_until` in epoch ms) and `status` (active, deleting).
  gsi1 `TENANT#<t>#USER#<u>#CONVS` / `<created_at>#<id>` lists a user's conversations.
- sk `MSG#<seq, 8 digits>`: one message (one item each, so no item grows towards 400 KB).
- sk `SUMMARY`: the current summary of older turns and the sequence number it covers.

Every key is built from the caller's tenant and user, so a conversation id alone reaches nothing:
another user's conversation is simply absent. Messages are never deleted one by one, so the
message numbers 1..seq all exist and are read by key (BatchGetItem, strongly consistent) rather
than by Query, which has no consistent read in `Dynamo.query`.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from aigateway.store.dynamo import ConditionFailed, Dynamo, Item, tx_delete, tx_put, tx_update

META = "META"
SUMMARY = "SUMMARY"
ACTIVE = "active"
DELETING = "deleting"
BATCH_GET_KEYS = 100  # BatchGetItem's limit per call
TRANSACTION_ITEMS = 100  # TransactWriteItems' limit per call


def message_sk(seq: int) -> str:
    return f"MSG#{seq:08d}"


@dataclass(frozen=True)
class ConversationKey:
    tenant_id: str
    user_id: str
    conversation_id: str

    @property
    def pk(self) -> str:
        return f"TENANT#{self.tenant_id}#USER#{self.user_id}#CONV#{self.conversation_id}"

    def item_key(self, sk: str) -> Item:
        return {"pk": self.pk, "sk": sk}


def list_partition(tenant_id: str, user_id: str) -> str:
    return f"TENANT#{tenant_id}#USER#{user_id}#CONVS"


def number_set(value: Any) -> set[int]:
    """A stored number set (absent when empty: DynamoDB has no empty sets) as ints."""
    if not value:
        return set()
    return {int(v) for v in value}


@dataclass(frozen=True)
class TurnCommit:
    """What one answered turn writes, all or nothing."""

    turn_id: str
    old_seq: int
    messages: tuple[Item, ...]  # the user message and the reply, seq old+1 and old+2
    summary: Item | None  # a new summary (replaces the stored one)
    covers_through: int | None  # the summary's new coverage, with the summary
    folded: frozenset[int]  # messages the new summary took in: no longer `unfolded`
    pin: int | None  # the new user message's number, when it is pinned
    pin_tokens: int
    added: dict[str, int]  # running totals to add: turns, input_tokens, output_tokens, cost_micros…
    title: str | None  # set only if the conversation has none yet (None: a summary kept after a failed turn)
    at: str


@dataclass(frozen=True)
class ConversationStore:
    db: Dynamo
    table: str

    # --- conversation ----------------------------------------------------------------------

    def create(self, key: ConversationKey, attributes: Item, *, created_at: str) -> Item:
        item = {
            **key.item_key(META),
            **attributes,
            "conversation_id": key.conversation_id,
            "tenant_id": key.tenant_id,
            "user_id": key.user_id,
            "status": ACTIVE,
            "seq": 0,
            "covers_through": 0,
            "created_at": created_at,
            "updated_at": created_at,
            "gsi1pk": list_partition(key.tenant_id, key.user_id),
            "gsi1sk": f"{created_at}#{key.conversation_id}",
        }
        self.db.put(self.table, item, condition="attribute_not_exists(pk)")
        return item

    def get(self, key: ConversationKey) -> Item | None:
        """The conversation's META item if it exists and is not being deleted."""
        item = self.db.get(self.table, key.item_key(META), consistent=True)
        return item if item is not None and item.get("status") == ACTIVE else None

    def page(self, tenant_id: str, user_id: str, *, limit: int, after: str | None) -> tuple[list[Item], str | None]:
        """A user's conversations, newest first; `after` is the previous page's last gsi1 sort key.

        The partition and the table key of the start position are rebuilt from the caller, so a
        cursor can only point inside the caller's own list.
        """
        partition = list_partition(tenant_id, user_id)
        start = None
        if after is not None:
            conversation_id = after.rsplit("#", 1)[-1]
            start = {
                **ConversationKey(tenant_id, user_id, conversation_id).item_key(META),
                "gsi1pk": partition,
                "gsi1sk": after,
            }
        items, last = self.db.query(
            self.table, "gsi1pk = :pk", {":pk": partition}, index="gsi1", limit=limit, forward=False, start_key=start
        )
        return items, (str(last["gsi1sk"]) if last is not None else None)

    # --- a turn ----------------------------------------------------------------------------

    def claim_turn(self, key: ConversationKey, *, turn_id: str, now_ms: int, until_ms: int) -> Item:
        """Claims the conversation for one turn (until `until_ms`); returns its META item.

        Raises ConditionFailed with the item as it was: None or not active (no such conversation),
        else another turn holds an unexpired claim.
        """
        return self.db.update(
            self.table,
            key.item_key(META),
            "SET turn_id = :t, turn_until = :until",
            values={":t": turn_id, ":until": until_ms, ":now": now_ms, ":active": ACTIVE},
            names={"#st": "status"},
            condition="attribute_exists(pk) AND #st = :active AND (attribute_not_exists(turn_id) OR turn_until < :now)",
        )

    def release_turn(self, key: ConversationKey, turn_id: str) -> None:
        """Gives the claim back (a turn that failed); a claim already taken over is left alone."""
        with suppress(ConditionFailed):
            self.db.update(
                self.table,
                key.item_key(META),
                "REMOVE turn_id, turn_until",
                values={":t": turn_id},
                condition="turn_id = :t",
            )

    def items(self, key: ConversationKey, seqs: list[int], *, summary: bool) -> tuple[dict[int, Item], Item | None]:
        """Messages by number (and the summary), strongly consistent; calls run side by side."""
        keys = [key.item_key(message_sk(s)) for s in sorted(set(seqs))]
        if summary:
            keys.append(key.item_key(SUMMARY))
        chunks = [keys[i : i + BATCH_GET_KEYS] for i in range(0, len(keys), BATCH_GET_KEYS)]
        found: list[Item] = []
        for part in self.db.parallel(*(lambda c=c: self.db.batch_get(self.table, c, consistent=True) for c in chunks)):
            found.extend(part)
        messages = {int(i["seq"]): i for i in found if str(i["sk"]).startswith("MSG#")}
        stored_summary = next((i for i in found if i["sk"] == SUMMARY), None)
        return messages, stored_summary

    def commit_turn(self, key: ConversationKey, commit: TurnCommit) -> None:
        """Both messages, the summary and the META update in one transaction (no messages: a summary
        kept after its turn failed; the claim is given back either way).

        META's condition (the claim is still this turn's, the conversation active, `seq` as read)
        makes a lost claim or a deletion cancel all of it: raises TransactionCancelled.
        """
        new_seq = commit.old_seq + len(commit.messages)
        values: dict[str, Any] = {
            ":t": commit.turn_id,
            ":old": commit.old_seq,
            ":seq": new_seq,
            ":at": commit.at,
            ":active": ACTIVE,
        }
        sets = ["seq = :seq", "updated_at = :at"]
        if commit.title is not None:
            values[":title"] = commit.title
            sets.append("title = if_not_exists(title, :title)")
        adds = []
        for i, (name, amount) in enumerate(sorted(commit.added.items())):
            values[f":a{i}"] = amount
            adds.append(f"{name} :a{i}")
        if commit.covers_through is not None:
            values[":c"] = commit.covers_through
            sets.append("covers_through = :c")
        if commit.pin is not None:
            values[":pin"] = {commit.pin}
            values[":pt"] = commit.pin_tokens
            adds += ["pinned :pin", "pinned_tokens :pt"]
        expression = "SET " + ", ".join(sets) + " REMOVE turn_id, turn_until"
        if adds:
            expression += " ADD " + ", ".join(adds)
        if commit.folded:
            values[":folded"] = set(commit.folded)
            expression += " DELETE unfolded :folded"
        items = [
            tx_update(
                self.table,
                key.item_key(META),
                expression,
                values=values,
                names={"#st": "status"},
                condition="turn_id = :t AND #st = :active AND seq = :old",
            )
        ]
        for message in commit.messages:
            item = {**key.item_key(message_sk(int(message["seq"]))), **message}
            items.append(tx_put(self.table, item, condition="attribute_not_exists(pk)"))
        if commit.summary is not None:
            items.append(tx_put(self.table, {**key.item_key(SUMMARY), **commit.summary}))
        self.db.transact(items)

    # --- pins ------------------------------------------------------------------------------

    def set_pinned(self, key: ConversationKey, seq: int, *, pinned: bool, tokens: int, at: str) -> Item:
        """Pins or unpins message `seq`; returns META as it now is.

        Pin and unpin are set operations (ADD/DELETE), so they never overwrite what a concurrent
        turn's commit adds. An unpinned message joins `unfolded`: the summary may not cover it
        (it was pinned when older turns were folded), so it is history again until it is folded.
        Raises ConditionFailed (with META as it was) when the conversation is gone, the message
        does not exist, or it is already in the requested state.
        """
        values: dict[str, Any] = {
            ":s": {seq},
            ":m": seq,
            ":t": tokens if pinned else -tokens,
            ":at": at,
            ":active": ACTIVE,
        }
        base = "attribute_exists(pk) AND #st = :active AND seq >= :m"
        if pinned:
            expression = "SET updated_at = :at ADD pinned :s, pinned_tokens :t"
            condition = f"{base} AND NOT contains(pinned, :m)"
        else:
            expression = "SET updated_at = :at DELETE pinned :s ADD unfolded :s, pinned_tokens :t"
            condition = f"{base} AND contains(pinned, :m)"
        return self.db.update(
            self.table, key.item_key(META), expression, values=values, names={"#st": "status"}, condition=condition
        )

    # --- deletion --------------------------------------------------------------------------

    def mark_deleting(self, key: ConversationKey, *, at: str) -> Item:
        """First step of a delete: the conversation leaves the list and refuses turns at once.

        A delete that died half-way is resumed by the next one (a `deleting` conversation may be
        marked again). Raises ConditionFailed when there is no such conversation.
        """
        return self.db.update(
            self.table,
            key.item_key(META),
            "SET #st = :deleting, updated_at = :at REMOVE gsi1pk, gsi1sk, turn_id, turn_until",
            values={":deleting": DELETING, ":at": at},
            names={"#st": "status"},
            condition="attribute_exists(pk)",
        )

    def delete_all(self, key: ConversationKey, seq: int) -> int:
        """Deletes every message and the summary, then META (last, so a retry can resume).

        Keys are known (1..seq and SUMMARY), so no Query is needed; 100 deletes per transaction
        (authorised per item as DeleteItem), transactions side by side. Returns items deleted.
        """
        keys = [key.item_key(message_sk(s)) for s in range(1, seq + 1)] + [key.item_key(SUMMARY)]
        chunks = [keys[i : i + TRANSACTION_ITEMS] for i in range(0, len(keys), TRANSACTION_ITEMS)]
        self.db.parallel(*(lambda c=c: self.db.transact([tx_delete(self.table, k) for k in c]) for c in chunks))
        self.db.transact(
            [
                tx_delete(
                    self.table,
                    key.item_key(META),
                    condition="#st = :deleting",
                    values={":deleting": DELETING},
                    names={"#st": "status"},
                )
            ]
        )
        return len(keys) + 1
