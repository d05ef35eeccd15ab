// The whole public API of qkv.
#pragma once

#include "qkv/attention.h"
#include "qkv/dtype.h"
#include "qkv/embeddings.h"
#include "qkv/error.h"
#include "qkv/linear_attention.h"
#include "qkv/matmul.h"
#include "qkv/nn.h"
#include "qkv/ops.h"
#include "qkv/positions.h"
#include "qkv/safetensors.h"
#include "qkv/scoring.h"
#include "qkv/tensor.h"
#include "qkv/threads.h"
#include "qkv/version.h"
