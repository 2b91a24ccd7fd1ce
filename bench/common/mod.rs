//! Realistic Feishu quick-approval callbacks for the benchmarks: the fields
//! Feishu sends, with the sizes seen in practice, sealed as Feishu seals them.
//! Shared by the criterion benches and the load harness's body generator.
#![allow(dead_code)]

use feishu_gate::testing::callback::envelope::CallbackKey;

pub const TOKEN: &str = "v-Ohw8k8nMp6UPx8dJ2qLz3t";
pub const KEY: &str = "kudryavka-action-callback-key-2024";

/// How big a callback is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// About 1 KiB on the wire once sealed: a comment and one attachment.
    Typical,
    /// Just under the 64 KiB body limit once sealed: a long comment and
    /// many attachments.
    Large,
}

/// The plaintext JSON of decision `n` (distinct `n`, distinct decision),
/// `token` last as Feishu orders it.
pub fn plaintext(n: u64, size: Size) -> String {
    let (attachments, reason_target) = match size {
        Size::Typical => (1, 150),
        Size::Large => (160, 15_000),
    };
    let mut reason = String::from("同意。请财务按合同第三期付款节点安排打款，发票已核对无误。");
    while reason.len() < reason_target {
        reason.push_str("补充说明：预算科目为研发费用，项目编号 RD-2024-117，验收报告见附件。");
    }
    let mut files = Vec::with_capacity(attachments);
    for i in 0..attachments {
        files.push(format!(
            r#"{{"file_type":"IMAGE","file_size":{},"file_name":"验收报告-第{i}页.png","url":"https://internal-api-drive-stream.feishu.cn/space/api/box/stream/download/authcode/?code=ZTFkNjQ5ZjU3NjM1{i:04}"}}"#,
            180_000 + i * 37
        ));
    }
    format!(
        r#"{{"action_type":"APPROVE","action_context":"{{\"source\":\"card\",\"version\":3}}","user_id":"ou_7d8a6e6df7621556ce0d21922b676706","approval_code":"7C468A54-8745-2245-9675-08B7C63E7A85","instance_id":"81D31358-93AF-92D6-7425-01A5D67C4E71","task_id":"{}","message_id":{},"reason":"{reason}","attachments":[{}],"token":"{TOKEN}"}}"#,
        7_412_000_000_000_000u64 + n,
        7_250_020_197_497_765_889u64 + n,
        files.join(",")
    )
}

/// The body Feishu POSTs: `{"encrypt":"..."}`, sealed under [`KEY`]. The IV
/// comes from `n` so the same `n` gives the same bytes.
pub fn sealed(n: u64, size: Size) -> String {
    let mut iv = [0u8; 16];
    iv[..8].copy_from_slice(&n.to_le_bytes());
    iv[8..].copy_from_slice(&0x5eed_u64.to_le_bytes());
    let encrypt = CallbackKey::new(KEY).encrypt_with_iv(plaintext(n, size).as_bytes(), iv);
    format!(r#"{{"encrypt":"{encrypt}"}}"#)
}
