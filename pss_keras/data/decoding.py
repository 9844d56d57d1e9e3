"""Images that fail to decode: found, named and handled.

An image that fails to decode (garbage, empty, truncated, unreadable; a TFDS
record whose image does not decode) is named, by file or by TFDS shard and
record (`decode_checked`), and handled by ``DataConfig.bad_images``
(`BadImages`): ``fail`` stops with one line naming it, ``skip`` drops it, the
same record every epoch (`pss_keras.data.pipelines.Pipelines`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import tensorflow as tf

if TYPE_CHECKING:
    from pss_keras.data.records import SplitRecords

# Records named per gap of failed decodes (a longer run of failures is counted).
_NAMED = 16
# Names listed in one message (the rest are counted).
_LISTED = 5


class DatasetError(ValueError):
    """A dataset that cannot be found or prepared; the message says how to fix it."""


class BadImageError(DatasetError):
    """Images that cannot be decoded, with ``bad_images=fail``; the message
    names them and says how to go on."""


def decode_checked(
    records: SplitRecords, indexed: tf.data.Dataset, report, expected=None, stop: str = ""
):
    """``(index, raw)`` records decoded to ``(index, (image, label))``; a
    record that fails to decode is dropped and reported, never an error.

    TensorFlow's decoders reject garbage, empty and truncated files (a JPEG
    without its end, too: ``try_recover_truncated`` is off), so a failed
    decode is what marks a bad image; nothing is read twice. The decode
    runs through ``ignore_errors`` (tf.data has no per-element catch); each
    record carries the indices of the ``_NAMED`` records before it, so a
    gap in the positions that come out names the records that failed. A
    last, never-decoded record closes the stream, so failures at its end are
    seen too, and the number of records read is compared with ``expected``
    (a file or shard that fails before decoding loses records unnamed).

    Args:
        report: ``report(missing, indices, lost) -> bool`` (a graph op),
            run only when records failed: ``missing`` failed decodes, the
            fixed-order ``indices`` of up to `_NAMED` of them, ``lost``
            records that were not read at all. False stops the stream.
        expected: how many records ``indexed`` holds (None: not checked).
        stop: the message of the error that stops the stream (`stop_message`).
    """
    no_index = tf.constant(-1, tf.int64)  # the closing record's index
    end_raw = tf.nest.map_structure(
        lambda spec: tf.zeros([d or 0 for d in spec.shape], spec.dtype), indexed.element_spec[1]
    )
    ds = indexed.concatenate(tf.data.Dataset.from_tensors((no_index, end_raw)))
    ds = ds.scan((tf.constant(0, tf.int64), tf.fill([_NAMED], no_index)), _number)
    decode = _decoder(records, no_index)
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    ds = ds.scan(tf.constant(-1, tf.int64), _gaps(report, expected)).filter(_keeper(stop))
    return ds.map(lambda i, example, ok: (i, example))


def _number(state, record):
    """`decode_checked`'s first scan: each record with its position in the
    stream and the indices of the `_NAMED` records before it."""
    position, before = state
    i, raw = record
    return (position + 1, tf.concat([before[1:], [i]], 0)), (position, i, raw, before)


def _decoder(records: SplitRecords, no_index):
    """`decode_checked`'s decode of a numbered record (the closing one,
    index ``no_index``, is not decoded)."""

    def decode(position, i, raw, before):
        image, label = tf.cond(
            i < 0,
            lambda: (tf.zeros([1, 1, 3], tf.uint8), no_index),
            lambda: records.decode(raw),
        )
        return position, i, (image, tf.cast(label, tf.int64)), before

    return decode


def _gaps(report, expected):
    """`decode_checked`'s second scan: the records missing before each
    decoded one (and at the closing record, those never read), reported."""

    def gaps(last, element):
        position, i, example, before = element
        missing = position - last - 1
        lost = tf.zeros_like(position)
        if expected is not None:
            lost = tf.where(i < 0, tf.maximum(expected - position, 0), lost)
        failed = before[_NAMED - tf.minimum(missing, _NAMED) :]
        ok = tf.cond(
            missing + lost > 0, lambda: report(missing, failed, lost), lambda: tf.constant(True)
        )
        return position, (i, example, ok)

    return gaps


def _keeper(stop: str):
    """`decode_checked`'s filter: drops the closing record, stops the
    stream where a report said so."""

    def keep(i, example, ok):
        # Outside the scan, whose state must move on even past a failure
        # (tf.data may read ahead of the element that stopped the stream).
        with tf.control_dependencies([tf.debugging.Assert(ok, [stop or stop_message()])]):
            return i >= 0

    return keep


def unreported(missing, indices, lost):
    """A `decode_checked` report for a checking pass: it only drops them."""
    return tf.constant(True)


def stop_message(split: str = "") -> str:
    """The message of the assertion that stops a stream of ``split`` at a bad
    image: the report's message is kept by `BadImages` (the TF error only
    says where to look), and `Pipelines.bad_image_errors` finds the split by it."""
    return (
        f"pss_keras: an unreadable image stopped the {split or 'data'} stream, see the error "
        "logged by pss_keras.data.decoding"
    )


# What a bad-image message suggests besides removing or replacing the files,
# unless the caller knows better (scripts/train.py: its flag; a job's
# evaluation or conversion: the job's run_config.json).
SKIP_HINT = "set bad_images to skip (DataConfig) to go on without them"


class BadImages:
    """The records of each split that failed to decode, and what to do
    about them (``policy``): ``fail`` stops, ``skip`` drops them and logs
    each name once."""

    def __init__(self, policy: str, split_records: dict, skip_hint: str = SKIP_HINT):
        self.policy = policy
        self.split_records = split_records
        self.skip_hint = skip_hint
        self.found = {split: {} for split in split_records}  # split -> {index: name}
        # split -> the message of the first report that stopped one of its
        # streams (`Pipelines.bad_image_errors` clears them).
        self.failures = {}

    def reporter(self, split: str):
        """A `decode_checked` ``report`` for a stream of ``split``."""

        def record(missing, indices, lost):
            describe = self.split_records[split].describe
            names = {int(i): describe(int(i)) for i in indices.numpy() if i >= 0}
            new = [name for i, name in names.items() if i not in self.found[split]]
            self.found[split].update(names)
            unnamed = int(missing) - len(names) + int(lost)
            if self.policy == "fail":
                if split not in self.failures:  # the first report stops the stream
                    self.failures[split] = self.message(split, list(names.values()), unnamed)
                    logging.error("%s", self.failures[split])
                return False
            if new or unnamed:
                logging.warning(
                    "Skipping %s (%d unreadable %s image(s) so far).",
                    _listed(new, unnamed), len(self.found[split]), split,
                )  # fmt: skip
            return True

        return lambda missing, indices, lost: tf.py_function(
            record, [missing, indices, lost], tf.bool
        )

    def message(self, split: str, names: list, unnamed: int = 0) -> str:
        return (
            f"Cannot decode {len(names) + unnamed} {split} image(s): {_listed(names, unnamed)}. "
            f"Remove or replace them, or {self.skip_hint}."
        )

    def conclude(self, split: str, bad: list) -> None:
        """After a checking pass found the ``bad`` indices of ``split``:
        fails naming every one (``fail``), or logs them (``skip``).

        Raises:
            BadImageError: under ``fail``, if there are any.
        """
        if not bad:
            return
        describe = self.split_records[split].describe
        self.found[split].update({i: describe(i) for i in bad})
        names = [self.found[split][i] for i in bad]
        if self.policy == "fail":
            raise BadImageError(self.message(split, names))
        logging.warning(
            "Skipping %d unreadable %s image(s): %s.", len(names), split, _listed(names)
        )


def _listed(names: list, unnamed: int = 0) -> str:
    """``a.jpg, b.jpg and 3 more`` (``unnamed``: failures without a name:
    a run of more than `_NAMED`, or records lost before decoding)."""
    shown = ", ".join(names[:_LISTED])
    more = len(names) - len(names[:_LISTED]) + unnamed
    if not shown:
        return f"{more} record(s) that failed before decoding (a file or shard could not be read)"
    return shown + (f" and {more} more" if more else "")
