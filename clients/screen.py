"""Client calls for the screen watcher (a mixin of OmniClient; self.stub and self.metadata come from CoreClient)."""
from __future__ import annotations

from typing import Any, Iterable, Iterator

from omnid.proto import omnid_pb2 as pb


class ScreenClient:
    stub: Any  # the generated stub has no type hints
    metadata: tuple[tuple[str, str], ...]

    def start_screen_watch(self, interval: float = 0.0, monitor: int = 1, prompt: str = "",
                           exclude: Iterable[str] = (), change_threshold: float = 0.0) -> pb.ScreenWatchState:
        """Start (or restart with new settings) the daemon's screen watcher; monitor 0 = all monitors."""
        request = pb.ScreenWatchRequest(interval_seconds=interval, monitor=monitor, prompt=prompt,
                                        exclude=list(exclude), change_threshold=change_threshold)
        return self.stub.StartScreenWatch(request, metadata=self.metadata)

    def stop_screen_watch(self) -> pb.ScreenWatchState:
        return self.stub.StopScreenWatch(pb.ScreenControlRequest(action="stop"), metadata=self.metadata)

    def control_screen_watch(self, action: str) -> pb.ScreenWatchState:
        """action: "pause", "resume" or "status"."""
        return self.stub.ControlScreenWatch(pb.ScreenControlRequest(action=action), metadata=self.metadata)

    def watch_screen(self) -> Iterator[pb.ScreenEvent]:
        """The watcher's events (the current state first, then observations and state changes) until cancelled."""
        return self.stub.WatchScreen(pb.WatchScreenRequest(), metadata=self.metadata)

    def screen_once(self, prompt: str = "", monitor: int = 1, max_tokens: int = 0) -> Iterator[pb.GenerateEvent]:
        """Grab the screen now and stream the model's answer about it."""
        return self.stub.ScreenOnce(pb.ScreenOnceRequest(monitor=monitor, prompt=prompt, max_tokens=max_tokens),
                                    metadata=self.metadata)

    def search_screen(self, query: str = "", limit: int = 20, since: float = 0.0,
                      until: float = 0.0) -> list[pb.ScreenObservation]:
        reply = self.stub.SearchScreen(pb.SearchScreenRequest(query=query, limit=limit, since_unix=since,
                                                              until_unix=until), metadata=self.metadata)
        return list(reply.observations)

    def delete_screen_history(self, ids: Iterable[str] = (), *, since: float = 0.0, until: float = 0.0,
                              everything: bool = False) -> pb.DeleteReply:
        """Delete screen observations by id (or unique prefix), seen within [since, until), or all."""
        request = pb.DeleteRequest(ids=list(ids), since_unix=since, until_unix=until, all=everything)
        return self.stub.DeleteScreenHistory(request, metadata=self.metadata)

    def ask_screen(self, question: str, since: float = 0.0, until: float = 0.0,
                   max_tokens: int = 0) -> Iterator[pb.GenerateEvent]:
        """Stream an answer from the screen history (not from a new grab)."""
        return self.stub.AskScreen(pb.AskScreenRequest(question=question, since_unix=since, until_unix=until,
                                                       max_tokens=max_tokens), metadata=self.metadata)
