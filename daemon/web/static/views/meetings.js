// Meetings: record from the default or a chosen microphone with the transcript growing as it is heard;
// past meetings, full-text search, each one's transcript and summary.
//
// /api/meetings (daemon/web/api_meetings.py) runs the daemon's RecordMeeting handler: a meeting started here
// shows in the menubar and `omni meeting`, and one started there can be followed here.
import { api, el, showError, sse } from "../common.js";
import { deleteButton } from "./w2_parts.js";

export const title = "Meetings";

export function mount(root) {
  const view = new MeetingsView(root);
  root.addEventListener("omnid:shown", () => view.refresh()); // shown again: what other clients added
  view.start();
}

function clock(seconds) {
  const s = Math.floor(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

class MeetingsView {
  constructor(root) {
    this.live = null; // the meeting id being followed live
    this.device = el("select", { id: "meeting-device" }, el("option", { value: "" }, "Default microphone"));
    this.titleInput = el("input", { type: "text", id: "meeting-title", placeholder: "Title (optional)" });
    this.record = el("button", { id: "meeting-record", onclick: () => this.begin() }, "Start recording");
    this.pause = el("button", { id: "meeting-pause", hidden: true, onclick: () => this.control("pause") }, "Pause");
    this.resume = el("button", { id: "meeting-resume", hidden: true, onclick: () => this.control("resume") },
      "Resume");
    this.stop = el("button", { id: "meeting-stop", hidden: true, onclick: () => this.control("stop") }, "Stop");
    this.state = el("p", { class: "w2-muted", id: "meeting-state" }, "Not recording.");
    this.transcript = el("ol", { class: "w2-transcript", id: "meeting-transcript" });
    this.summary = el("div", { class: "w2-summary", id: "meeting-summary" });
    this.heading = el("h2", { id: "meeting-heading" }, "New meeting");
    this.search = el("input", { type: "search", id: "meeting-search", placeholder: "Search transcripts…" });
    this.list = el("ul", { class: "w2-list", id: "meeting-list" });
    const searchForm = el("form", {}, this.search);
    searchForm.addEventListener("submit", (e) => { e.preventDefault(); this.refresh(); });
    root.replaceChildren(el("div", { class: "w2-columns" },
      el("nav", { class: "w2-side" }, el("h3", {}, "Past meetings"), searchForm, this.list),
      el("section", { class: "w2-detail" },
        el("div", { class: "w2-controls" }, this.device, this.titleInput, this.record, this.pause, this.resume,
          this.stop),
        this.state, this.heading, this.transcript, this.summary)));
  }

  async start() {
    try {
      const { devices } = await api("/api/meetings/devices");
      for (const d of devices) {
        this.device.append(el("option", { value: d.name }, d.name + (d.is_default ? " (default)" : "")));
      }
    } catch (err) {
      showError(err);
    }
    this.refresh();
    try {
      const current = await api("/api/meetings/current");
      if (current.state !== "none") this.follow(current.meeting_id, "Meeting being recorded");
    } catch (err) {
      showError(err);
    }
  }

  async refresh() {
    const q = this.search.value.trim();
    try {
      const { meetings } = await api(`/api/meetings?q=${encodeURIComponent(q)}`);
      this.list.replaceChildren(...meetings.map((m) => el("li", {},
        el("button", { class: "w2-link", "data-meeting": m.meeting_id, onclick: () => this.open(m.meeting_id) },
          m.title, el("span", { class: "w2-muted" },
            ` ${new Date(m.created_unix * 1000).toLocaleString()}, ${clock(m.duration_seconds)}`)),
        m.snippet ? el("div", { class: "w2-snippet" }, m.snippet) : "")));
      if (!meetings.length) this.list.replaceChildren(el("li", { class: "w2-muted" }, q ? "No match." : "None yet."));
    } catch (err) {
      showError(err);
    }
  }

  async begin() {
    try {
      const state = await api("/api/meetings", { method: "POST",
        json: { device: this.device.value, title: this.titleInput.value.trim() } });
      this.follow(state.meeting_id, this.titleInput.value.trim() || "New meeting");
    } catch (err) {
      showError(err);
    }
  }

  async control(action) {
    try {
      this.showState(await api(`/api/meetings/${this.live}/${action}`, { method: "POST" }));
    } catch (err) {
      showError(err);
    }
  }

  showState(s) {
    const going = s.state === "recording" || s.state === "paused";
    this.record.hidden = going;
    this.pause.hidden = s.state !== "recording";
    this.resume.hidden = s.state !== "paused";
    this.stop.hidden = !going;
    this.state.textContent = going ? `${s.state === "paused" ? "Paused" : "Recording"}: ${clock(s.recorded_seconds)}`
      : s.state === "stopped" && this.live ? "Stopped: transcribing the last words…" : "Not recording.";
    this.state.dataset.state = s.state;
  }

  segment(s) {
    return el("li", {}, el("span", { class: "w2-time" }, clock(s.start_seconds)), " ", s.text);
  }

  // The live transcript: segments as they are transcribed, then the summary.
  async follow(meetingId, heading) {
    this.live = meetingId;
    this.heading.textContent = heading;
    this.transcript.replaceChildren();
    this.summary.replaceChildren();
    try {
      await sse(`/api/meetings/${meetingId}/live`, {}, (event) => {
        if (event.error) throw new Error(event.error.message);
        if (event.segment) this.transcript.append(this.segment(event.segment));
        else if (event.state) this.showState(event.state);
        else if (event.done) {
          this.live = null;
          this.showState({ state: "none" });
          this.showSummary(event.done);
          this.refresh();
        }
      });
    } catch (err) {
      showError(err);
    }
  }

  showSummary(meeting) {
    this.summary.replaceChildren(...(meeting.summary
      ? [el("h3", {}, "Summary"), el("p", { id: "meeting-summary-text" }, meeting.summary)] : []));
  }

  async open(meetingId) {
    if (this.live) return; // the live transcript stays until the recording ends
    try {
      const m = await api(`/api/meetings/${meetingId}`);
      const title = this.list.querySelector(`[data-meeting="${m.meeting_id}"]`)?.firstChild?.textContent;
      this.heading.replaceChildren(title || "Meeting", " ", deleteButton("meeting-delete", async () => {
        await api(`/api/meetings/${m.meeting_id}`, { method: "DELETE" });
        this.heading.textContent = `${title || "The meeting"} was deleted.`;
        this.transcript.replaceChildren();
        this.summary.replaceChildren();
        this.refresh();
      }));
      this.transcript.replaceChildren(...m.segments.map((s) => this.segment(s)));
      this.showSummary(m);
    } catch (err) {
      showError(err);
    }
  }
}
