"""kombu's filesystem transport with atomic publishing: the embedded broker of `make run`.

kombu's own `_put` creates the message file and then writes it, while `_get` on another
process lists the folder, moves any `*.<queue>.msg` file away and reads it, without the
writer's lock. A reader that comes between the two reads an empty file, and the
JSONDecodeError is fatal to the consuming worker ("Unrecoverable error"): seen in the e2e
tests once a beat task was added that publishes every few seconds. Here a message is written
under a name no reader matches and renamed into place, which is atomic on one file system:
a reader sees a whole message or none.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

# Celery's `broker_transport` setting takes this path (runner/broker.py, config/settings.py).
TRANSPORT = "runner.filesystem_broker:AtomicFilesystemTransport"


class AtomicChannel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # Readers take only names whose part after the first dot is exactly "<queue>.msg".
        partial = f"{final}.partial"
        try:
            with open(partial, "wb") as handle:
                handle.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc


class AtomicFilesystemTransport(filesystem.Transport):
    Channel = AtomicChannel
