# Copyright 2024 Bytedance Ltd. and/or its affiliates
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

import re

from mathruler.grader import extract_boxed_content, grade_answer


def format_reward(predict_str: str) -> float:
    pattern = re.compile(r".*\\boxed\{.*\}.*", re.DOTALL)
    match_result = re.fullmatch(pattern, predict_str)
    return 1.0 if match_result else 0.0


def acc_reward(predict_str: str, ground_truth: str) -> float:
    gt_raw = str(ground_truth[0])
    answer = extract_boxed_content(predict_str)
    if answer == 'None':
        answer = predict_str
    return 1.0 if grade_answer(answer, gt_raw) else 0.0


def compute_score(predict_str: str, ground_truth: str, is_val=False) -> float:
    return acc_reward(predict_str, ground_truth)
    # if is_val:
    #     return acc_reward(predict_str, ground_truth)
    # else:
    #     return 0.9 * acc_reward(predict_str, ground_truth) + 0.1 * format_reward(predict_str)
