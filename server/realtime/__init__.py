"""The real-time core: WebSocket connections (``connection``), their commands
(``commands``), this process's hub, the node that joins it to the other
processes (``node``: brokers, ordering, presence, control), and the service
that publishes (``service.Realtime``)."""

from server.realtime.service import Realtime

__all__ = ["Realtime"]
