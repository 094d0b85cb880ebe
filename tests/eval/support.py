"""The evaluation tests' local task: three questions about two clips with known motion."""

TASK_LINES = [
    {
        "video": "right.mp4",
        "question": "which way does it move ?",
        "options": ["left", "right", "up", "down"],
        "answer": "B",
        "type": "direction",
        "needs_motion": True,
    },
    {
        "video": "down.mp4",
        "question": "what moves ?",
        "answer": "square",
        "type": "object",
        "needs_motion": False,
    },
    {
        "video": "down.mp4",
        "question": "which way does it move ?",
        "options": ["up", "down"],
        "answer": "down",
        "type": "direction",
        "needs_motion": True,
    },
]
