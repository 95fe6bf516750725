# End-to-end check of the GHN commands on a tiny budget (Fashion-MNIST):
#   ghn info -> train-ghn (2 steps, checkpoint, log) -> train-ghn --resume to 3 steps -> eval-ghn
#   -> ghn stats -> predict -> ghn info --checkpoint -> finetune -> experiment mixed -> export-int -> eval-int
#   -> experiment qat (+ --resume), and clear errors for a corrupted checkpoint.
set(dir ${WORK}/ghn_workflow)
file(REMOVE_RECURSE ${dir})
file(MAKE_DIRECTORY ${dir})
if(NOT EXISTS /usr/share/datasets/fashion-mnist AND NOT DEFINED ENV{GHNQ_FASHION_MNIST})
  message("GHNQ_SKIP: Fashion-MNIST not installed")
  return()
endif()
function(run)
  execute_process(COMMAND ${GHNQ} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "ghnq ${ARGN} failed (${rc}):\n${out}\n${err}")
  endif()
  set(out "${out}" PARENT_SCOPE)
endfunction()
# run_fails(REGEX args...): ghnq args... must exit non-zero with REGEX in its error output.
function(run_fails regex)
  execute_process(COMMAND ${GHNQ} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(rc EQUAL 0 OR NOT err MATCHES "${regex}")
    list(JOIN ARGN " " cmd)
    message(FATAL_ERROR "ghnq ${cmd} must fail with '${regex}' (rc ${rc}):\n${err}")
  endif()
endfunction()

run(ghn info)
string(JSON n GET "${out}" num_params)
if(NOT n EQUAL 1620764)
  message(FATAL_ERROR "ghn info: num_params ${n}, expected 1620764")
endif()

set(common --meta-batch 2 --batch 16 --fixed-width --eval-archs 2 --eval-test-limit 64 --no-progress --save-every 1)
run(train-ghn --out ${dir} --steps 3 ${common} --threads 2)
file(STRINGS ${dir}/train.jsonl lines REGEX "\"event\":\"step\"")
list(LENGTH lines n)
if(NOT n EQUAL 3)
  message(FATAL_ERROR "train.jsonl: ${n} step lines, expected 3")
endif()
foreach(f ghn.safetensors eval_FP32.csv)
  if(NOT EXISTS ${dir}/${f})
    message(FATAL_ERROR "train-ghn did not write ${f}")
  endif()
endforeach()
run(ghn info --checkpoint ${dir}/ghn.safetensors)
string(JSON step GET "${out}" step)
if(NOT step EQUAL 3)
  message(FATAL_ERROR "ghn info --checkpoint: step ${step}, expected 3")
endif()
# The checkpoint holds this build's GHN ("cli": H = GHNQ_CLI_HIDDEN); the named configuration stays H = 32.
string(JSON n_ckpt GET "${out}" num_params)
string(JSON h_ckpt GET "${out}" config hidden)
run(ghn info --config cli)
string(JSON n GET "${out}" num_params)
string(JSON h GET "${out}" config hidden)
if(NOT n EQUAL n_ckpt OR NOT h EQUAL h_ckpt)
  message(FATAL_ERROR "ghn info --config cli: ${n} parameters, H = ${h}; the checkpoint has ${n_ckpt}, H = ${h_ckpt}")
endif()
run(ghn info --config ghn2q-cifar10)
string(JSON n GET "${out}" num_params)
string(JSON h GET "${out}" config hidden)
if(NOT n EQUAL 1621086 OR NOT h EQUAL 32)
  message(FATAL_ERROR "ghn info --config ghn2q-cifar10: ${n} parameters, H = ${h}; expected 1621086, H = 32")
endif()

# A training option given with --resume would be ignored: it is an error naming the option.
run_fails("--steps cannot be combined with --resume" train-ghn --out ${dir} --resume --steps 10)

# While another process holds the directory (here flock(1) holds its lock), a resume fails at once.
find_program(FLOCK flock)
if(FLOCK)
  execute_process(COMMAND ${FLOCK} ${dir}/.lock ${GHNQ} train-ghn --out ${dir} --resume --eval-archs 0 --no-progress
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(rc EQUAL 0 OR NOT err MATCHES "another ghnq process is writing to this directory")
    message(FATAL_ERROR "train-ghn on a locked directory must fail (rc ${rc}): ${err}")
  endif()
endif()

# Resuming a finished run does no step; the log keeps its lines.
run(train-ghn --out ${dir} --resume --eval-archs 0 --no-progress)
file(STRINGS ${dir}/train.jsonl lines REGEX "\"event\":\"step\"")
list(LENGTH lines n)
if(NOT n EQUAL 3)
  message(FATAL_ERROR "after --resume of a finished run: ${n} step lines, expected 3")
endif()

run(eval-ghn --checkpoint ${dir}/ghn.safetensors --archs 2 --groups test,families --test-limit 64
    --csv ${dir}/e.csv --log ${dir}/e.jsonl)
if(NOT out MATCHES "test +2 " OR NOT out MATCHES "families +4 ")
  message(FATAL_ERROR "eval-ghn table lacks its groups:\n${out}")
endif()
# scripts/paired_diff.sh: the paired difference of two per-architecture CSVs (diffs 10, -5, 0:
# mean 1.67, SE sqrt(58.33 / 3) = 4.41), and an error when the architectures differ.
set(hdr "name,group,num_params,top1,loss,predict_ms,finite")
file(WRITE ${dir}/pa.csv "${hdr}\nt-0,test,1,50.0,1,1,1\nt-1,test,1,60.0,1,1,1\nt-2,test,1,70.0,1,1,1\n")
file(WRITE ${dir}/pb.csv "${hdr}\nt-2,test,1,70.0,1,1,1\nt-0,test,1,40.0,1,1,1\nt-1,test,1,65.0,1,1,1\n")
file(WRITE ${dir}/pc.csv "${hdr}\nt-0,test,1,40.0,1,1,1\nt-9,test,1,65.0,1,1,1\n")
execute_process(COMMAND bash ${SCRIPTS}/paired_diff.sh ${dir}/pa.csv ${dir}/pb.csv RESULT_VARIABLE rc OUTPUT_VARIABLE out)
if(NOT rc EQUAL 0 OR NOT out MATCHES "A - B: 1.67 \\+- 4.41 top-1 points over 3 architectures, A ahead on 1, behind on 1")
  message(FATAL_ERROR "paired_diff.sh (rc ${rc}): ${out}")
endif()
execute_process(COMMAND bash ${SCRIPTS}/paired_diff.sh ${dir}/pa.csv ${dir}/pc.csv RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc EQUAL 0 OR NOT err MATCHES "architecture t-9 of .*pc.csv is not in")
  message(FATAL_ERROR "paired_diff.sh with different architectures must fail naming one (rc ${rc}): ${err}")
endif()
# scripts/<name>.sh must fail with a message starting "<name>: " on each bad argument list given
# (arguments of one list separated by '|').
function(script_fails name)
  foreach(bad ${ARGN})
    string(REPLACE "|" ";" args "${bad}")
    execute_process(COMMAND bash ${SCRIPTS}/${name}.sh ${args} RESULT_VARIABLE rc ERROR_VARIABLE err)
    if(rc EQUAL 0 OR NOT err MATCHES "${name}: ")
      message(FATAL_ERROR "${name}.sh ${args} must fail with a message (rc ${rc}): ${err}")
    endif()
  endforeach()
endfunction()
# scripts/train_summary.sh: windows of the training log (a skipped step left out), the median step
# time and the evaluations, on hand-computed values; then on this run's own log, and its errors.
file(WRITE ${dir}/ts.jsonl
  "{\"acc\":0.1,\"event\":\"step\",\"loss\":2.0,\"seconds\":1.0,\"skipped\":false,\"step\":0}\n"
  "{\"acc\":0.3,\"event\":\"step\",\"loss\":1.0,\"seconds\":3.0,\"skipped\":false,\"step\":1}\n"
  "{\"acc\":0.0,\"event\":\"step\",\"loss\":null,\"seconds\":100.0,\"skipped\":true,\"step\":2}\n"
  "{\"event\":\"eval\",\"group\":\"test\",\"max\":30.0,\"mean\":25.5,\"min\":9.5,\"n\":20,\"se\":1.25,\"step\":2}\n"
  "{\"acc\":0.5,\"event\":\"step\",\"loss\":0.5,\"seconds\":2.0,\"skipped\":false,\"step\":3}\n")
execute_process(COMMAND bash ${SCRIPTS}/train_summary.sh ${dir}/ts.jsonl 2 RESULT_VARIABLE rc OUTPUT_VARIABLE out)
if(NOT rc EQUAL 0 OR NOT out MATCHES "steps 0-1: loss 1.500, accuracy 0.200 \\(2 steps\\)\nsteps 2-3: loss 0.500, accuracy 0.500 \\(1 steps\\)\nmedian 2.00 s per step over 3 steps\neval at step 2 \\(test\\): 25.50 \\+- 1.25 top-1 % over 20 architectures")
  message(FATAL_ERROR "train_summary.sh (rc ${rc}):\n${out}")
endif()
execute_process(COMMAND bash ${SCRIPTS}/train_summary.sh ${dir}/train.jsonl RESULT_VARIABLE rc OUTPUT_VARIABLE out)
if(NOT rc EQUAL 0 OR NOT out MATCHES "steps 0-49: loss [0-9.]+, accuracy [0-9.]+ \\(3 steps\\)\nmedian [0-9.]+ s per step over 3 steps")
  message(FATAL_ERROR "train_summary.sh on the run's log (rc ${rc}):\n${out}")
endif()
script_fails(train_summary "${dir}/ts.jsonl|0" "${dir}/pa.csv")
# scripts/eval_summary.sh: per-group figures of an eval CSV, on hand-computed values, and its errors.
file(WRITE ${dir}/es.csv "name,group,num_params,top1,loss,predict_ms,finite\n"
  "a,g,1,10.0,0,0,1\nb,g,1,30.0,0,0,1\nh1,h,1,75.0,0,0,1\nc,g,1,20.0,0,0,1\nd,g,1,80.0,0,0,1\n")
execute_process(COMMAND bash ${SCRIPTS}/eval_summary.sh ${dir}/es.csv RESULT_VARIABLE rc OUTPUT_VARIABLE out)
if(NOT rc EQUAL 0 OR NOT out STREQUAL "g: n 4, mean 35.00 +- 15.55, median 25.00, max 80.00, min 10.00, 1 at or above 70%; lowest: a 10.00, c 20.00, b 30.00\nh: n 1, mean 75.00 +- 0.00, median 75.00, max 75.00, min 75.00, 1 at or above 70%; lowest: h1 75.00\n")
  message(FATAL_ERROR "eval_summary.sh (rc ${rc}):\n${out}")
endif()
script_fails(eval_summary "${dir}/es.csv|x" "${dir}/ts.jsonl")
run(eval-ghn --checkpoint ${dir}/ghn.safetensors --archs 2 --test-limit 64 --quant W4A4 --bn fold --calib quant)
if(NOT out MATCHES "W4A4, BN fold \\(quantized calibration\\)")
  message(FATAL_ERROR "eval-ghn --calib quant:\n${out}")
endif()
run_fails("--calib applies to --bn fold only" eval-ghn --checkpoint ${dir}/ghn.safetensors --calib quant)
file(STRINGS ${dir}/e.jsonl arch_lines REGEX "\"event\":\"arch\".*\"top1\":")
file(STRINGS ${dir}/e.jsonl group_lines REGEX "\"event\":\"final_eval\"")
list(LENGTH arch_lines na)
list(LENGTH group_lines ng)
if(NOT na EQUAL 6 OR NOT ng EQUAL 2)  # every architecture as it finishes, then one line per group
  message(FATAL_ERROR "eval-ghn --log: ${na} architecture lines (expected 6), ${ng} group lines (expected 2)")
endif()

# ghn stats: one CSV row per architecture, geometric-mean gain inside [min, max], BN-free nets flagged
run(ghn stats --checkpoint ${dir}/ghn.safetensors --groups test,bn-free --archs 2 --csv ${dir}/stats.csv)
if(NOT out MATCHES "bn_free \\(no BN\\)")
  message(FATAL_ERROR "ghn stats: no bn_free group line:\n${out}")
endif()
file(STRINGS ${dir}/stats.csv stat_lines)
list(LENGTH stat_lines ns)
if(NOT ns EQUAL 5)
  message(FATAL_ERROR "ghn stats --csv: ${ns} lines, expected a header and 4 architectures")
endif()
list(REMOVE_AT stat_lines 0)
foreach(line IN LISTS stat_lines)
  string(REPLACE "," ";" f "${line}")
  list(GET f 1 group)
  list(GET f 2 has_bn)
  list(GET f 3 nw)
  list(GET f 4 geo)
  list(GET f 5 lo)
  list(GET f 6 hi)
  if(NOT nw GREATER 0 OR NOT lo GREATER 0 OR geo LESS lo OR geo GREATER hi)
    message(FATAL_ERROR "ghn stats: inconsistent row ${line}")
  endif()
  if(group STREQUAL "bn_free" AND NOT has_bn EQUAL 0)
    message(FATAL_ERROR "ghn stats: a bn-free architecture with BatchNorm: ${line}")
  endif()
endforeach()
run_fails("exactly one of --checkpoint FILE and --untrained" ghn stats --untrained --checkpoint ${dir}/ghn.safetensors)

if(EXISTS ${BENCH})
  run(predict --checkpoint ${dir}/ghn.safetensors --arch ${BENCH} --index 3 --input 1x28x28 --out ${dir}/p.safetensors)
  string(JSON tensors GET "${out}" tensors)
  if(tensors LESS 10 OR NOT EXISTS ${dir}/p.safetensors)
    message(FATAL_ERROR "predict: ${out}")
  endif()
endif()

# The quantization commands on the tiny GHN.
run(finetune --test-index 0 --init ghn:${dir}/ghn.safetensors --init random --quant W4A4 --steps 2 --eval-every 1
    --test-limit 64 --batch 16 --calib-batches 1 --out ${dir}/ft --threads 2)
file(STRINGS ${dir}/ft/finetune.csv lines)
list(LENGTH lines n)
if(NOT n EQUAL 7)  # header + 2 inits x steps 0, 1, 2
  message(FATAL_ERROR "finetune.csv: ${n} lines, expected 7")
endif()
run(experiment mixed --checkpoint ${dir}/ghn.safetensors --archs 2 --test-limit 64 --policy uniform-4
    --policy k3x3-2_1x1-4 --out ${dir}/mixed --threads 2)
file(STRINGS ${dir}/mixed/mixed.csv lines)
list(LENGTH lines n)
if(NOT n EQUAL 3)  # header + 2 policies
  message(FATAL_ERROR "mixed.csv: ${n} lines, expected 3")
endif()
run(export-int --checkpoint ${dir}/ghn.safetensors --test-index 0 --quant W8A8 --calib-batches 1
    --out ${dir}/int.safetensors --threads 2)
run(eval-int --model ${dir}/int.safetensors --test-limit 64 --noise-floor --threads 2)
if(NOT out MATCHES "integer executor top-1: +[0-9]+\\.[0-9]+ %" OR NOT out MATCHES "argmax agreement"
   OR NOT out MATCHES "noise floor: [^\n]*agreement [0-9]+\\.[0-9]+ %")
  message(FATAL_ERROR "eval-int output:\n${out}")
endif()

# The study: a tiny QAT-4 row fine-tuned from this GHN; a second start in the same directory is an error,
# --resume reads finished cells back, recomputes the missing ones from the row's checkpoint (no new
# training step) and gives the same table; a changed option is an error naming it.
set(study_common experiment qat --out ${dir}/study --fp-init ${dir}/ghn.safetensors --columns FP32,W4A4 --bn batch
    --ft-steps 2 --meta-batch 2 --batch 16 --eval-archs 2 --fixed-width --threads 2)
set(study ${study_common} --rows fp-lsq,qat4,scratch --test-limit 64 --scratch-archs 1 --scratch-steps 3)
run(${study})
file(READ ${dir}/study/results.csv first)
file(STRINGS ${dir}/study/results.csv lines)
list(LENGTH lines n)
if(NOT n EQUAL 9)  # header + (random init, FP (lsq), QAT-4, scratch) x (FP32, W4A4)
  message(FATAL_ERROR "study results.csv: ${n} lines, expected 9")
endif()
if(NOT EXISTS ${dir}/study/scratch/test-0.safetensors)
  message(FATAL_ERROR "the scratch row did not keep its trained weights")
endif()
file(READ ${dir}/study/results.md md)
if(NOT md MATCHES "\\| GHN \\| FP32 \\| W4A4 \\|" OR NOT md MATCHES "\\| QAT-4 \\| [0-9]+\\.[0-9] ± [0-9]+\\.[0-9] \\("
   OR NOT md MATCHES "\\| scratch \\| [^\n]*\\[n=1\\]")
  message(FATAL_ERROR "study results.md:\n${md}")
endif()
run_fails("already holds a study" ${study})
file(STRINGS ${dir}/study/results.jsonl cells)
list(GET cells 0 cell0)
if(NOT cell0 MATCHES "\"seconds\":[0-9]")
  message(FATAL_ERROR "a study cell must record its evaluation time: ${cell0}")
endif()
list(SUBLIST cells 0 2 kept)
list(JOIN kept "\n" kept)
file(WRITE ${dir}/study/results.jsonl "${kept}\n{\"row\":\"QAT")  # + a line cut short by a kill
run(${study} --resume)
if(NOT out MATCHES "resuming: 2 finished cells read back" OR NOT out MATCHES "test-0: read back"
   OR NOT out MATCHES "ignoring the incomplete last line")
  message(FATAL_ERROR "experiment qat --resume:\n${out}")
endif()
file(READ ${dir}/study/results.csv again)
if(NOT again STREQUAL first)
  message(FATAL_ERROR "resumed study differs:\n${first}\nvs\n${again}")
endif()
run(${study} --resume)  # the log was rewritten clean: every cell reads back
if(NOT out MATCHES "resuming: 8 finished cells read back")
  message(FATAL_ERROR "second experiment qat --resume:\n${out}")
endif()
file(STRINGS ${dir}/study/QAT-4/train.jsonl lines REGEX "\"event\":\"step\"")
list(LENGTH lines n)
if(NOT n EQUAL 2)
  message(FATAL_ERROR "resuming a finished row trained again: ${n} step lines, expected 2")
endif()
run_fails("option 'test_limit' is 32"
          ${study_common} --rows fp-lsq,qat4,scratch --test-limit 32 --scratch-archs 1 --scratch-steps 3 --resume)
# Resuming without the scratch row ignores the scratch options (they concern that row only) and
# reads the other rows' cells back; with the row, a changed scratch option is still an error.
run(${study_common} --rows fp-lsq,qat4 --test-limit 64 --resume)
if(NOT out MATCHES "resuming: 8 finished cells read back" OR out MATCHES "== scratch")
  message(FATAL_ERROR "experiment qat --resume without the scratch row:\n${out}")
endif()
file(STRINGS ${dir}/study/results.csv lines)
list(LENGTH lines n)
if(NOT n EQUAL 7)  # header + (random init, FP (lsq), QAT-4) x (FP32, W4A4)
  message(FATAL_ERROR "study without the scratch row: results.csv has ${n} lines, expected 7")
endif()
run_fails("option 'scratch_steps' is 4"
          ${study_common} --rows fp-lsq,qat4,scratch --test-limit 64 --scratch-archs 1 --scratch-steps 4 --resume)

# A truncated checkpoint is a clear error naming the file.
file(WRITE ${dir}/bad.safetensors "garbage")
run_fails("bad.safetensors" eval-ghn --checkpoint ${dir}/bad.safetensors)
file(REMOVE_RECURSE ${dir})
