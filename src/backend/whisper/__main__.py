"""Run the transcription service for a rig: python -m llamarig.backend.whisper --rig FILE."""
import argparse
from pathlib import Path

import uvicorn

from llamarig.backend.whisper.app import create_app
from llamarig.backend.whisper.transcriber import Transcriber
from llamarig.shared.logs import setup_logging
from llamarig.shared.rig import load_rig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rig", required=True)
    parser.add_argument("--port", type=int, help="this placement's port (default whisper.port)")
    args = parser.parse_args()
    rig = load_rig(args.rig)
    setup_logging()
    w = rig.whisper
    folder = rig.resolve(w.model_dir)
    transcriber = Transcriber(str(folder), w.device.value, w.compute_type, w.max_new_tokens)
    app = create_app(transcriber, Path(folder).name, w.max_audio_mib)
    uvicorn.run(app, host="127.0.0.1", port=args.port or w.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
