"""Decoding for the analysis pass: frames decoded and prepared on worker threads, handed to the
analysis in presentation order.

The analysis needs every frame in order, but not from one decoder. Two sources:

- ``SequentialSource``: one decoder (FFmpeg's frame threads) on a background thread that also
  runs ``prepare`` on each frame, a few frames ahead of the consumer.
- ``ChunkedSource``: one demuxer reads the packets once and deals runs of whole GOPs
  ("chunks": a keyframe and everything up to the next chunk's keyframe) to several
  single-threaded decoders, round robin; each decodes and prepares its chunks and the consumer
  reads them back in order. On 2 cores this decodes 720p H.264 about 1.25x faster than one
  decoder with frame threads, which spend about a quarter of their CPU time synchronising
  (measured: 1.30 ms of CPU a frame single-threaded, 1.64 ms with frame threads).

A chunk only decodes on its own when its GOPs are closed. Every chunk is checked: it must start
at a keyframe with a timestamp, give exactly one frame per packet, and start (in presentation
order) with that keyframe. Open GOPs (leading frames that reference the previous GOP),
streams whose packets are not frames, or missing timestamps fail the check with
``ChunkMismatch`` before the consumer sees a wrong frame; the caller then decodes the video
again with ``SequentialSource``. Decoding the same packets with the same options gives the same
frames either way, so the two sources feed the analysis identical input.

Decoder and demuxer errors reach the consumer at the point in the stream where they happened.
``close()`` stops every thread within a fraction of a second; call it before closing the
containers.
"""

from __future__ import annotations

import queue
import threading

_POLL_S = 0.05


class ChunkMismatch(Exception):
    """A chunk did not decode independently of the rest of the stream."""


class _Done:
    """End of the stream."""


class _End:
    """End of a chunk; ``problem`` says why it did not decode on its own (None: it did)."""

    def __init__(self, problem: str | None):
        self.problem = problem


class _Threads:
    """Stop-aware bounded queues between threads."""

    def __init__(self):
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, target, *args, name: str) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name=name)
        self._threads.append(thread)
        thread.start()

    def put(self, q: queue.Queue, item) -> bool:
        """Block until ``item`` is queued (True) or the source is closed (False)."""
        while not self._stop.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def get(self, q: queue.Queue):
        """Block until an item arrives; None once the source is closed."""
        while not self._stop.is_set():
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        return None

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


class SequentialSource(_Threads):
    """``prepare(frame, index)`` of every frame of ``stream``, decoded by one decoder on a
    background thread up to ``depth`` frames ahead of the consumer."""

    def __init__(self, container, stream, make_prepare, depth: int = 8):
        super().__init__()
        self._queue = queue.Queue(depth)
        self.start(self._run, container, stream, make_prepare, name="vidcurate-decode")

    def _run(self, container, stream, make_prepare) -> None:
        try:
            prepare = make_prepare()
            for index, frame in enumerate(container.decode(stream)):
                if not self.put(self._queue, prepare(frame, index)):
                    return
            self.put(self._queue, _Done)
        except BaseException as err:  # handed to the consumer, which decides what it means
            self.put(self._queue, err)

    def __iter__(self):
        while True:
            item = self.get(self._queue)
            if item is _Done or item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class ChunkedSource(_Threads):
    """``prepare(frame, index)`` of every frame of ``stream``, decoded by ``len(decoders)``
    single-threaded decoders working on separate chunks of GOPs at once.

    ``container``/``stream``: the demuxer, read once. ``decoders``: one opened codec context per
    worker, each from its own container on the same input (so it carries the stream's
    parameters, side data included). A chunk is at least ``min_chunk`` packets long and ends
    where a keyframe starts the next one. Each worker keeps up to ``depth`` prepared frames
    ahead of the consumer: the slack that lets it finish its chunk while the consumer still
    reads an earlier one. Frames travel in batches of up to ``batch`` (fewer thread wake-ups).
    """

    def __init__(self, container, stream, decoders, make_prepare, *, min_chunk: int = 32,
                 depth: int = 256, packets: int = 256, batch: int = 8):
        super().__init__()
        self.min_chunk, self.batch = min_chunk, batch
        self._inboxes = [queue.Queue(packets) for _ in decoders]
        self._outboxes = [queue.Queue(max(1, depth // batch)) for _ in decoders]
        time_base = getattr(stream, "time_base", None)
        for k, ctx in enumerate(decoders):
            self.start(self._decode, ctx, make_prepare, time_base, self._inboxes[k], self._outboxes[k],
                       name=f"vidcurate-decode-{k}")
        self.start(self._demux, container, stream, name="vidcurate-demux")

    def _send(self, chunk: int, item) -> bool:
        return self.put(self._inboxes[chunk % len(self._inboxes)], item)

    def _demux(self, container, stream) -> None:
        chunk, size, index = -1, 0, 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the demuxer's end-of-stream packet
                    continue
                if chunk < 0 or (packet.is_keyframe and size >= self.min_chunk):
                    if chunk >= 0 and not self._send(chunk, ("end", size)):
                        return
                    chunk, size = chunk + 1, 0
                    if not packet.is_keyframe or packet.pts is None:
                        self._send(chunk, ChunkMismatch(f"chunk {chunk} starts without a keyframe timestamp"))
                        return
                    if not self._send(chunk, ("start", index, packet.pts)):
                        return
                if not self._send(chunk, packet):
                    return
                size, index = size + 1, index + 1
            if chunk >= 0 and not self._send(chunk, ("end", size)):
                return
            self._send(chunk + 1, _Done)
        except BaseException as err:  # demuxer errors reach the consumer where they happened
            self._send(max(chunk, 0), err)

    def _decode(self, ctx, make_prepare, time_base, inbox: queue.Queue, outbox: queue.Queue) -> None:
        batch: list = []
        try:
            prepare = make_prepare()
            first, start_pts, made, head_pts = 0, None, 0, None
            while True:
                item = self.get(inbox)
                if item is None:
                    return
                if item is _Done or isinstance(item, BaseException):
                    if batch:
                        self.put(outbox, batch)
                    self.put(outbox, item)
                    return
                if isinstance(item, tuple) and item[0] == "start":
                    _, first, start_pts = item
                    made, head_pts = 0, None
                    continue
                end = isinstance(item, tuple)
                for frame in ctx.decode(None if end else item):
                    if time_base is not None:  # frames drained at the end have no packet to take it from
                        frame.time_base = time_base
                    if made == 0:
                        head_pts = frame.pts
                    batch.append(prepare(frame, first + made))
                    made += 1
                if end:
                    ctx.flush_buffers()
                    problem = None
                    if made != item[1]:
                        problem = f"{item[1]} packets decoded to {made} frames"
                    elif head_pts != start_pts:
                        problem = f"the first frame shown is not the chunk's keyframe (pts {head_pts} != {start_pts})"
                    batch.append(_End(problem))
                if (end or len(batch) >= self.batch) and not self.put(outbox, batch):
                    return
                if end or len(batch) >= self.batch:
                    batch = []
        except BaseException as err:
            if batch:  # the frames decoded before the error still reach the consumer
                self.put(outbox, batch)
            self.put(outbox, err)

    def __iter__(self):
        chunk, n = 0, len(self._outboxes)
        while True:
            batch = self.get(self._outboxes[chunk % n])
            if batch is _Done or batch is None:
                return
            if isinstance(batch, BaseException):
                raise batch
            for item in batch:
                if isinstance(item, _End):
                    if item.problem:
                        raise ChunkMismatch(f"chunk {chunk}: {item.problem}")
                    chunk += 1
                else:
                    yield item
