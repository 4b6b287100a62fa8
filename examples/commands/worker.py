"""A program that tells its supervisor it is ready through sd_notify, as it would systemd.

It fetches a URL every two seconds; it is ready once the first fetch worked.
Nothing here knows about startable: `NOTIFY_SOCKET` is systemd's protocol.
"""

import os
import signal
import socket
import sys
import time
import urllib.request


def notify(message: str) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if path:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), path)


def main() -> None:
    url = sys.argv[1]
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))  # its stop signal: a clean end
    fetched = 0
    while True:
        with urllib.request.urlopen(url, timeout=5) as answer:
            fetched += 1
            print(f"fetched {url}: {answer.status}", flush=True)
        if fetched == 1:
            notify("READY=1")
        notify(f"STATUS={fetched} fetches")
        time.sleep(2)


if __name__ == "__main__":
    main()
