"""Side-by-side latency benchmark (see mod_vision/benchmark.py); same as `mod-vision benchmark`.

    python tools/benchmark.py --imgsz 640 1280 --batch 1 8 --threads 2
"""

from mod_vision.benchmark import main

if __name__ == "__main__":
    main()
