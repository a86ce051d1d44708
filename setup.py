import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = re.search(r"__version__ = '([^']+)'", (here / 'pyiqa_maclip' / 'version.py').read_text()).group(1)

setup(
    name='pyiqa-maclip',
    version=version,
    description='MA-CLIP (magnitude-aware CLIP, AAAI 2026) no-reference image quality metric for pyiqa: '
                'any device, batched, any image size, bounded memory',
    long_description=(here / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='MIT',
    python_requires='>=3.9',
    packages=find_packages(include=['pyiqa_maclip', 'pyiqa_maclip.*']),
    # The HTML report's page, inlined into every report it writes.
    package_data={'pyiqa_maclip.app.report': ['templates/*.html', 'templates/*.css', 'templates/*.js']},
    install_requires=[
        'pyiqa>=0.1.16,<0.2',
        'torch>=2.0',
        'torchvision',
        'openai-clip',
        # openai-clip imports pkg_resources, which setuptools 81 removed.
        'setuptools<81',
        'tqdm',
        'accelerate',
        'pandas',
        # stats.bootstrap(rng=...) does the benchmark's bootstrap (1.15).
        'scipy>=1.15',
        'matplotlib',
        'PyYAML',
        # The benchmark configuration's schema (JsonValue came in 2.5).
        'pydantic>=2.5',
        'Pillow',
        # pandas' reader for .xlsx MOS tables (AGIQA-1K ships one).
        'openpyxl',
        # Lock files: one download per cache, one run per output (torch needs it too).
        'filelock',
    ],
    # playwright drives the system's chromium in the HTML report's tests (.ci/run installs chromium).
    # Formats a collection may be kept in: Parquet inputs and outputs; datasets' folders (read with
    # pyarrow; the datasets package makes them and reads local Parquet/Arrow folders). Ray Data.
    extras_require={'test': ['pytest', 'playwright'], 'parquet': ['pyarrow'], 'hf': ['pyarrow', 'datasets'],
                    'ray': ['ray[data]>=2.51']},
    entry_points={
        'pyiqa.archs': ['maclip = pyiqa_maclip.registration:register'],
        'console_scripts': ['pyiqa-maclip = pyiqa_maclip.app.cli:main'],
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Image Recognition',
    ],
)
