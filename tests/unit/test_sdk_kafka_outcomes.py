"""What the SDK's Kafka transport does with each broker error: send again later, or give up."""

from __future__ import annotations

from kafka import errors

from runledger_sdk.transport import Outcome, Record
from runledger_sdk.transport_kafka import KafkaTransport

RECORD = Record(seq=1, key=b"run", value=b"{}")


def test_errors_a_later_send_can_fix_keep_the_event() -> None:
    for error in (
        errors.NotLeaderForPartitionError(),  # retriable in Kafka's own terms
        errors.KafkaConnectionError(),
        errors.TopicAuthorizationFailedError(),  # an admin may grant it
        # tansu 0.6.0's answer to a produce that lost a race for its offsets (nothing stored).
        errors.UnknownError(),
    ):
        assert KafkaTransport._classify(error, RECORD) is Outcome.FAILED, error


def test_an_event_the_broker_can_never_take_is_refused_for_good() -> None:
    assert KafkaTransport._classify(errors.MessageSizeTooLargeError(), RECORD) is Outcome.REJECTED
    assert KafkaTransport._classify(errors.CorruptRecordError(), RECORD) is Outcome.REJECTED
