"""A loopback MJPEG-over-HTTP server: a stand-in IP camera for the stream tests and `tools/stream_stall.py`."""

from __future__ import annotations

import http.server
import socket
import struct
import threading
import time

import cv2
import numpy as np

BOUNDARY = b"frame"


class MJPEGServer:
    """Serves `frames` (BGR arrays) once as multipart/x-mixed-replace on http://127.0.0.1:PORT/stream, then stops.

    end="close": all frames, the closing boundary, then the connection closes. end="drop": `drop_after` frames and
    half of the next, then a TCP reset, as a camera that loses power. end="stall": `drop_after` frames, then the
    connection stays open with nothing sent (until the server is shut down). In these cases the server then answers 404
    to any reconnection (Ultralytics' LoadStreams tries one), so the stream is over for good. end="reconnect": a drop
    as end="drop", then the reconnection gets the frames from `drop_after` on, and a close: a camera back after a
    power cut.
    Ultralytics probes a suffix-less http URL with `requests` first, to tell a single image from a stream; that probe
    gets the stream's headers only, so every frame goes to the OpenCV capture.
    """

    def __init__(self, frames: list[np.ndarray], end: str = "close", drop_after: int = 0, fps: float = 0):
        if end not in ("close", "drop", "stall", "reconnect"):
            raise ValueError(f"end={end!r}: use 'close', 'drop', 'stall' or 'reconnect'")
        if end in ("drop", "reconnect") and not 0 <= drop_after < len(frames):  # a drop cuts frame `drop_after` in half
            raise ValueError(f"end={end!r} needs 0 <= drop_after < {len(frames)} (the frame count), got {drop_after}")
        self.jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames]
        self.end, self.drop_after, self.fps, self.served = end, drop_after, fps, False
        self.connections = 0
        self.stop = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if server.served and not (server.end == "reconnect" and server.connections == 1):
                    self.send_error(404, "stream over")
                    return
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}")
                self.end_headers()
                if self.headers.get("User-Agent", "").startswith("python-requests"):
                    return
                server.served = True
                server.connections += 1
                server.stream(self)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/stream"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def stream(self, handler) -> None:
        resumed = self.end == "reconnect" and self.connections == 2
        n = len(self.jpegs) if self.end == "close" or resumed else self.drop_after
        for jpg in self.jpegs[self.drop_after if resumed else 0 : n]:
            handler.wfile.write(b"--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (BOUNDARY, len(jpg), jpg))
            handler.wfile.flush()
            if self.fps:
                time.sleep(1 / self.fps)
        if self.end == "close" or resumed:
            handler.wfile.write(b"--%s--\r\n" % BOUNDARY)
            return
        if self.end == "stall":
            self.stop.wait()
            return
        jpg = self.jpegs[n]
        handler.wfile.write(b"--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % (BOUNDARY, len(jpg)))
        handler.wfile.write(jpg[: len(jpg) // 2])
        handler.wfile.flush()
        time.sleep(0.5)  # let the client read what was sent before the reset discards its socket buffer
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.connection.close()  # SO_LINGER 0: a RST, not a FIN
        handler.close_connection = True

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
